"""The configuration's cross-field checks: what `lib.config.load` refuses, per role."""

from __future__ import annotations

import ipaddress

from lib.config import (
    DEV_JWT_SECRET,
    DEV_SIGNING_KEYS,
    PROVIDER_DEFAULT_BASE_URLS,
    Role,
    Settings,
)
from lib.queue import plans
from lib.queue.signing import DEV_TOKEN


def _cost_problems(s: Settings) -> list[str]:
    problems = []
    for name, value in s.cost_overrides.items():
        if name.startswith("COST_"):
            try:
                ok = int(value) >= 0
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{name}: must be a whole number of coins >= 0, not {value!r}")
    return problems


def _shared_problems(s: Settings) -> list[str]:
    problems = []
    if not s.redis_url and not (s.upstash_redis_rest_url and s.upstash_redis_rest_token):
        problems.append("set REDIS_URL, or UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN")
    if s.uses_postgres and not s.database_url:
        problems.append("STORE_BACKEND=postgres needs DATABASE_URL")
    if not s.uses_postgres and not (s.supabase_url and s.supabase_service_role_key):
        problems.append("set DATABASE_URL, or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
    if not s.worker_urls and not s.worker_url.startswith(("http://", "https://")):
        problems.append("WORKER_URL must be the worker's public http(s) base URL")
    return problems + _box_problems(s)


def _box_problems(s: Settings) -> list[str]:
    """WORKER_URLS: distinct http(s) base URLs, https in production (QStash delivers there)."""
    problems = []
    scheme = ("https://",) if s.is_production else ("http://", "https://")
    for url in s.worker_urls:
        if not url.startswith(scheme) or " " in url or len(url) > 2000:
            which = "https" if s.is_production else "http(s)"
            problems.append(f"WORKER_URLS: {url!r} must be a worker box's public {which} base URL")
    if len(set(s.worker_urls)) != len(s.worker_urls):
        problems.append("WORKER_URLS lists a box twice")
    return problems


def plan_problems(s: Settings) -> list[str]:
    """The settings that QSTASH_PLAN cannot honour: retries, response time, parallelism."""
    return plans.problems(
        s.qstash_plan,
        job_retries=s.job_retries,
        job_timeout_seconds=s.job_timeout_seconds,
        # Detached, a delivery lasts only until its job started: the model limits bound jobs
        # running in the worker, not deliveries, and the flow-control parallelism the producer
        # asks for is capped at the plan's (lib/queue/producer.py).
        concurrency={}
        if s.execution_mode == "detached"
        else {
            "LLM_MAX_CONCURRENCY_FREE": s.llm_max_concurrency_free,
            "LLM_MAX_CONCURRENCY_PAID": s.llm_max_concurrency_paid,
        },
    )


def _api_problems(s: Settings) -> list[str]:
    problems = []
    if not s.supabase_jwt_secret and not s.jwks_url:
        problems.append("set SUPABASE_JWT_SECRET or SUPABASE_URL (for JWKS) to verify tokens")
    if s.app_env != "development":
        if len(s.stream_token_secret) < 32:
            problems.append(
                f"STREAM_TOKEN_SECRET must be set (>= 32 chars) with APP_ENV={s.app_env}"
            )
        elif s.stream_token_secret == s.supabase_jwt_secret:
            problems.append("STREAM_TOKEN_SECRET must differ from SUPABASE_JWT_SECRET")
    elif len(s.stream_secret) < 32:
        problems.append("STREAM_TOKEN_SECRET (or SUPABASE_JWT_SECRET) must be >= 32 chars")
    if s.qstash_mode == "broker" and not s.qstash_token:
        problems.append("QSTASH_TOKEN is required when QSTASH_MODE=broker")
    if s.qstash_mode == "direct" and not s.qstash_current_signing_key:
        problems.append("QSTASH_MODE=direct signs deliveries: set QSTASH_CURRENT_SIGNING_KEY")
    if s.qstash_mode == "direct" and s.is_production:
        problems.append("QSTASH_MODE=direct is for development only")
    if s.is_production and s.sse_read_mode == "poll":
        problems.append("SSE_READ_MODE=poll is the benchmark baseline; not for production")
    if s.producer_url and not s.signing_keys:
        problems.append(
            "PRODUCER_URL serves the reconciler, whose calls are signed: set "
            "QSTASH_CURRENT_SIGNING_KEY and QSTASH_NEXT_SIGNING_KEY"
        )
    return problems


def _worker_problems(s: Settings) -> list[str]:
    problems = []
    if not s.worker_urls:
        pass  # WORKER_URL is checked with the shared settings
    elif not s.worker_url.startswith(("http://", "https://")):
        problems.append("WORKER_URL must be this worker box's own public http(s) base URL")
    elif s.worker_url.rstrip("/") not in s.worker_urls:
        problems.append(
            "WORKER_URL must be one of WORKER_URLS: a box not listed is never sent a job"
        )
    if s.uses_postgres and s.db_max_connections < s.web_concurrency:
        problems.append(
            f"DB_MAX_CONNECTIONS={s.db_max_connections} gives each of the WEB_CONCURRENCY="
            f"{s.web_concurrency} worker processes less than one connection"
        )
    if not s.signing_keys:
        problems.append("set QSTASH_CURRENT_SIGNING_KEY and QSTASH_NEXT_SIGNING_KEY")
    if s.execution_mode == "detached" and s.qstash_mode == "broker" and not s.qstash_token:
        problems.append(
            "EXECUTION_MODE=detached publishes retries and waits: set QSTASH_TOKEN on the worker"
        )
    for item in [s.llm_model_free, s.llm_model_paid, *s.llm_model_overrides.values()]:
        provider, sep, model = item.partition(":")
        if not sep or not model:
            problems.append(f"model spec {item!r} must look like 'provider:model'")
        elif provider not in PROVIDER_DEFAULT_BASE_URLS:
            problems.append(
                f"unknown provider {provider!r} in {item!r}; use one of "
                f"{', '.join(sorted(PROVIDER_DEFAULT_BASE_URLS))}"
            )
    return problems


def public_dev_values(s: Settings, role: Role) -> list[str]:
    """The settings of `role` that hold a public dev secret or key (`.env.example`'s values)."""
    found = []
    if role == "api":
        if s.supabase_jwt_secret == DEV_JWT_SECRET:
            found.append("SUPABASE_JWT_SECRET")
        if s.stream_token_secret == DEV_JWT_SECRET:
            found.append("STREAM_TOKEN_SECRET")
        if s.qstash_token == DEV_TOKEN:
            found.append("QSTASH_TOKEN")
    # A detached worker publishes its own retries and waits with the token.
    if role == "worker" and s.execution_mode == "detached" and s.qstash_token == DEV_TOKEN:
        found.append("QSTASH_TOKEN")
    # The producer verifies signatures too once it serves the reconciler (PRODUCER_URL).
    if role == "worker" or (role == "api" and (s.qstash_mode == "direct" or s.producer_url)):
        if s.qstash_current_signing_key in DEV_SIGNING_KEYS:
            found.append("QSTASH_CURRENT_SIGNING_KEY")
        if s.qstash_next_signing_key in DEV_SIGNING_KEYS:
            found.append("QSTASH_NEXT_SIGNING_KEY")
    return found


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _dev_value_problems(s: Settings, role: Role) -> list[str]:
    """The public dev values are accepted only by an explicit development process on loopback,
    never on Vercel: anyone can sign tokens and deliveries with them."""
    names = public_dev_values(s, role)
    if not names:
        return []
    which = ", ".join(names) + (
        " is a public dev value" if len(names) == 1 else " are public dev values"
    )
    if s.on_vercel:
        return [f"{which}, refused on Vercel (VERCEL is set)"]
    if s.app_env != "development":
        return [f"{which}, accepted only with APP_ENV=development (APP_ENV is {s.app_env})"]
    if not is_loopback(s.bind_host):
        return [f"{which}, accepted only on loopback (HOST is {s.bind_host})"]
    return []


def problems(s: Settings, role: Role) -> list[str]:
    """Every problem of `s` for `role`, sorted: what `lib.config.load` refuses to start with."""
    problems = _cost_problems(s)
    if role != "any":
        problems += _shared_problems(s) + plan_problems(s) + _dev_value_problems(s, role)
    if role == "api":
        problems += _api_problems(s)
    if role == "worker":
        problems += _worker_problems(s)
    return sorted(set(problems))
