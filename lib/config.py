"""Typed configuration, read once: the environment, then `.env`, then the defaults.

`load(role)` validates everything the given process needs and raises one `ConfigError` whose
message lists every problem found, so a misconfigured deployment fails at start with the whole
list rather than one variable at a time. `Settings` adds what the settings mean together to their
fields (lib/config_fields.py, the only place that reads the environment).

`Settings` is a plain pydantic model fed by `environment()` (python-dotenv reads `.env`), not a
pydantic-settings `BaseSettings`: importing pydantic-settings cost every cold function about
20 ms (docs/performance.md), and the two settings that are not plain scalars decode their own
values. The precedence is pydantic-settings': arguments, then the environment, then `.env`,
then the defaults; names are case-insensitive.
"""

from __future__ import annotations

from functools import cache, cached_property
from typing import Any, Literal

from pydantic import ValidationError

from lib.config_fields import SettingsFields, environment, extra_env
from lib.errors import ConfigError
from lib.models import VISION_KINDS, Tier
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY

Role = Literal["api", "worker", "any"]

# Providers reachable through the OpenAI-compatible API. A model spec is "provider:model".
PROVIDER_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com",
    "glm": "https://open.bigmodel.cn/api/paas/v4",
}
# Providers that implement `response_format: json_schema`; the rest get `json_object`.
JSON_SCHEMA_PROVIDERS = {"openai"}

DEV_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"  # noqa: S105
DEV_SIGNING_KEYS = (DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
# Detached mode's default background jobs per worker process (WORKER_MAX_JOBS=0): a streaming
# job is a thread mostly waiting on the model (docs/performance.md: live jobs per worker).
DETACHED_JOBS_PER_PROCESS = 500


class Settings(SettingsFields):
    """Every variable in `.env.example` (the fields, with their types and defaults:
    `SettingsFields`) and the values derived from them. `Settings(**values)` reads the
    environment and `.env` for every field not given."""

    def __init__(self, **values: Any) -> None:
        fields = type(self).model_fields
        found = {k: v for k, v in environment().items() if k in fields}
        super().__init__(**{**found, **values})

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def bind_host(self) -> str:
        """The address the worker binds: HOST, else loopback in development, else 0.0.0.0."""
        if self.host:
            return self.host
        return "127.0.0.1" if self.app_env == "development" else "0.0.0.0"  # noqa: S104

    @property
    def on_vercel(self) -> bool:
        return self.vercel.strip() not in ("", "0")

    @property
    def signing_keys(self) -> list[str]:
        return [k for k in (self.qstash_current_signing_key, self.qstash_next_signing_key) if k]

    @property
    def boxes(self) -> list[str]:
        """The worker boxes' base URLs, in order: WORKER_URLS, else WORKER_URL alone."""
        if self.worker_urls:
            return list(self.worker_urls)
        return [self.worker_url.rstrip("/")] if self.worker_url else []

    @property
    def box_url(self) -> str:
        """This box's own base URL (WORKER_URL), else the first listed box (a producer)."""
        if self.worker_url:
            return self.worker_url.rstrip("/")
        return self.boxes[0] if self.boxes else ""

    @property
    def max_jobs(self) -> int:
        """WORKER_MAX_JOBS: the jobs one box runs at once, all its processes together."""
        if self.worker_max_jobs:
            return self.worker_max_jobs
        per_process = DETACHED_JOBS_PER_PROCESS if self.execution_mode == "detached" else 0
        return self.web_concurrency * (per_process or self.gunicorn_threads)

    @property
    def max_jobs_per_process(self) -> int:
        """Detached mode: the background jobs one worker process runs at once (its share of
        WORKER_MAX_JOBS)."""
        return max(1, -(-self.max_jobs // max(1, self.web_concurrency)))

    @property
    def execute_url(self) -> str:
        return self.box_url + "/v1/execute"

    @property
    def failed_url(self) -> str:
        return self.box_url + "/v1/failed"

    @property
    def reconcile_url(self) -> str:
        """The reconciler's public URL: the QStash schedule's destination and the `sub` its
        signatures must carry. Empty while PRODUCER_URL is unset."""
        return self.producer_url.rstrip("/") + "/api/reconcile" if self.producer_url else ""

    @property
    def uses_postgres(self) -> bool:
        if self.store_backend != "auto":
            return self.store_backend == "postgres"
        return bool(self.database_url)

    @property
    def jwks_url(self) -> str:
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return ""

    @property
    def storage_api_url(self) -> str:
        """The Storage API's base URL: STORAGE_URL, else `$SUPABASE_URL/storage/v1`."""
        if self.storage_url:
            return self.storage_url.rstrip("/")
        return self.supabase_url.rstrip("/") + "/storage/v1" if self.supabase_url else ""

    @property
    def stream_secret(self) -> str:
        """STREAM_TOKEN_SECRET; in development only, SUPABASE_JWT_SECRET when it is unset."""
        if self.stream_token_secret or self.app_env != "development":
            return self.stream_token_secret
        return self.supabase_jwt_secret

    def cost(self, kind: str, default: int) -> int:
        """The coin cost of `kind`: `COST_<KIND>` when set, else the handler's default."""
        raw = self.cost_overrides.get(f"COST_{kind.upper()}")
        return int(raw) if raw is not None else default

    @cached_property
    def cost_overrides(self) -> dict[str, str]:
        """The `COST_<KIND>` settings, read once (environment over `.env`)."""
        return {k: v for k, v in extra_env().items() if k.startswith("COST_")}

    def model_for(self, tier: str, kind: str) -> str:
        """The "provider:model" spec for a tier and kind."""
        override = self.llm_model_overrides.get(f"{tier}.{kind}")
        if override:
            return override
        if kind in VISION_KINDS:
            return self.llm_vision_model_paid if tier == Tier.PAID else self.llm_vision_model_free
        return self.llm_model_paid if tier == Tier.PAID else self.llm_model_free

    def provider(self, name: str) -> tuple[str, str]:
        """Return (base_url, api_key) for an OpenAI-compatible provider name."""
        base = getattr(self, f"{name}_base_url", "") or PROVIDER_DEFAULT_BASE_URLS.get(name, "")
        return base, getattr(self, f"{name}_api_key", "")


def load(role: Role = "any", **overrides: object) -> Settings:
    """Read and validate the configuration for `role` ("api", "worker" or "any").

    Raises ConfigError listing every problem (type errors and missing settings) at once.
    """
    lines: list[str] = []
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()]
        # Carry on with the defaults of the bad fields, so the other problems are listed too.
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        defaults = {
            name: Settings.model_fields[name].get_default(call_default_factory=True)
            for name in bad
            if name in Settings.model_fields
        }
        try:
            settings = Settings(**{**overrides, **defaults})
        except ValidationError:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines)) from None
    from lib.config_checks import problems as role_problems

    problems = lines + role_problems(settings, role)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return settings


@cache
def settings(role: Role = "any") -> Settings:
    """The process-wide settings, loaded once."""
    return load(role)
