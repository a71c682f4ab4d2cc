"""`cs doctor`: is this configuration valid, and is every dependency it names reachable?

It checks the configuration of each role (every problem, as the services would list them at
start), what the QStash plan (QSTASH_PLAN) can honour, Redis, the database, the broker (QStash
or the dev broker; a detached worker publishes too), the LLM providers in use, and the
producer's and worker's health endpoints when they are running. It prints one table and exits 1
when anything required is down. Targets are shown without passwords or tokens.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from lib import config
from lib.config import Settings
from lib.config_checks import plan_problems
from lib.errors import AppError, ConfigError

if TYPE_CHECKING:
    from lib.state import State

TIMEOUT_SECONDS = 5.0
ROLES: dict[str, tuple[config.Role, ...]] = {
    "api": ("api",),
    "worker": ("worker",),
    "all": ("api", "worker"),
}


@dataclass
class Check:
    name: str
    target: str
    ok: bool | None  # None: not checked (skipped, or an optional service not running)
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.ok is False


def redact(url: str) -> str:
    """`url` without its password, query string or fragment."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, AppError):
        text = f"{type(exc).__name__}: {text}"
    cause = exc.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += f": {str(cause).strip()}"
    return text.splitlines()[0][:200]


def _timed(fn: Callable[[], str | None]) -> tuple[bool, str]:
    started = time.perf_counter()
    try:
        extra = fn()
    # A diagnosis reports every failure, whatever its type, rather than stopping at the first.
    except Exception as exc:
        return False, _reason(exc)
    ms = (time.perf_counter() - started) * 1000
    return True, f"{ms:.0f} ms" + (f", {extra}" if extra else "")


def check_config(role: config.Role) -> Check:
    try:
        config.load(role)
    except ConfigError as exc:
        problems = [line.strip().removeprefix("- ") for line in exc.message.splitlines()[1:]]
        return Check(f"config ({role})", ".env + environment", False, "\n".join(problems))
    return Check(f"config ({role})", ".env + environment", True, "valid")


def check_plan(settings: Settings) -> Check:
    """Whether QSTASH_PLAN can honour the retries, job timeout and concurrency configured."""
    from lib.queue.plans import plan

    limits = plan(settings.qstash_plan)
    problems = plan_problems(settings)
    if problems:
        return Check("qstash plan", limits.name, False, "\n".join(problems))
    if limits.parallelism is None:
        return Check("qstash plan", limits.name, None, "limits set by contract: not checked")
    detail = (
        f"parallelism {limits.parallelism}, retries <= {limits.max_retries}, "
        f"responses < {limits.max_response_seconds:g} s"
    )
    return Check("qstash plan", limits.name, True, detail)


def check_redis(settings: Settings) -> Check:
    from lib import state

    if settings.redis_url:
        target = redact(settings.redis_url)
    elif settings.upstash_redis_rest_url:
        target = redact(settings.upstash_redis_rest_url) + " (Upstash REST)"
    else:
        return Check("redis", "(not set)", False, "not configured")

    def ping() -> None:
        st = state.from_settings(settings)
        try:
            st.ping()
        finally:
            st.close()

    ok, detail = _timed(ping)
    return Check("redis", target, ok, detail)


def check_boxes(settings: Settings, st: State | None = None) -> Check:
    """The worker boxes of WORKER_URLS that announce themselves in Redis, with their free room.
    All live: ok; none: FAIL (every job goes to the first listed); some: reported."""
    from lib import state
    from lib.boxes import Registry

    listed = settings.boxes
    own = st is None
    st = st or state.from_settings(settings)
    try:
        live = Registry(st).live()
    except AppError as exc:
        return Check("boxes", f"{len(listed)} listed", False, exc.message)
    finally:
        if own:
            st.close()
    up = [url for url in listed if url in live]
    parts = [f"{redact(url)} {live[url].free} free" for url in up]
    parts += [f"{redact(url)} silent" for url in listed if url not in live]
    parts += [f"{redact(url)} announced but not listed" for url in live if url not in listed]
    ok = True if len(up) == len(listed) else (False if not up else None)
    return Check("boxes", f"{len(up)} of {len(listed)} live", ok, "; ".join(parts))


def _postgres_reason(url: str) -> str:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ""


def check_database(settings: Settings) -> Check:
    from lib import store

    if settings.uses_postgres and settings.database_url:
        target = redact(settings.database_url)
    elif not settings.uses_postgres and settings.supabase_url:
        target = redact(settings.supabase_url) + " (PostgREST)"
    else:
        return Check("database", "(not set)", False, "not configured")
    # The pool logs each failed connection attempt; the table says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

    def ping() -> None:
        db = store.from_settings(settings, pool_size=1, timeout=3.0)
        try:
            db.ping()
        finally:
            db.close()

    ok, detail = _timed(ping)
    if not ok and settings.uses_postgres:
        detail = _postgres_reason(settings.database_url) or detail
    return Check("database", target, ok, detail)


def check_broker(settings: Settings) -> Check:
    if settings.qstash_mode == "direct":
        return Check("broker", "QSTASH_MODE=direct", None, "no broker: deliveries go to WORKER_URL")
    url = settings.qstash_url.rstrip("/") + "/v2/keys"

    def keys() -> str:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {settings.qstash_token}"},
            timeout=TIMEOUT_SECONDS,
        )
        if response.status_code == 401:
            raise AppError("the broker refused QSTASH_TOKEN (401)")
        response.raise_for_status()
        return "token accepted"

    ok, detail = _timed(keys)
    return Check("broker", redact(settings.qstash_url), ok, detail)


def _providers(settings: Settings) -> list[str]:
    specs = [
        settings.llm_model_free,
        settings.llm_model_paid,
        *settings.llm_model_overrides.values(),
    ]
    names = [spec.partition(":")[0] for spec in specs if ":" in spec]
    return sorted(set(names) & set(config.PROVIDER_DEFAULT_BASE_URLS))


def check_llm(settings: Settings) -> list[Check]:
    checks = []
    for name in _providers(settings):
        base, key = settings.provider(name)
        if not key:
            checks.append(
                Check(f"llm ({name})", redact(base), False, f"set {name.upper()}_API_KEY")
            )
            continue

        def models(base: str = base, key: str = key) -> str:
            response = httpx.get(
                base.rstrip("/") + "/models",
                headers={"Authorization": f"Bearer {key}"},
                timeout=TIMEOUT_SECONDS,
            )
            response.raise_for_status()
            listed = response.json().get("data")
            return f"{len(listed)} model(s)" if isinstance(listed, list) else "answered"

        ok, detail = _timed(models)
        checks.append(Check(f"llm ({name})", redact(base), ok, detail))
    return checks


def check_service(name: str, url: str) -> Check:
    """A running service must be healthy; one that is not running is only reported."""
    if not url.startswith(("http://", "https://")):
        return Check(name, url or "(not set)", None, "no URL to check")
    try:
        response = httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Check(name, redact(url), None, f"not running ({type(exc).__name__})")
    if response.status_code == 200:
        return Check(name, redact(url), True, "healthy")
    return Check(name, redact(url), False, f"{response.status_code}: {response.text[:160]}")


def run(role: str, producer_url: str) -> list[Check]:
    """Every check for `role` (api, worker or all), in the order the table shows them."""
    roles = ROLES[role]
    checks = [check_config(r) for r in roles]
    try:
        settings = config.load("any")
    except ConfigError as exc:
        checks.append(Check("dependencies", "", False, f"not checked: {exc.message}"))
        return checks
    checks += [check_plan(settings), check_redis(settings), check_database(settings)]
    # A detached worker (the default) publishes its own retries and waits through the broker.
    if "api" in roles or settings.execution_mode == "detached":
        checks.append(check_broker(settings))
    if "api" in roles and len(settings.boxes) > 1:
        checks.append(check_boxes(settings))
    if "worker" in roles:
        checks += check_llm(settings)
    if "api" in roles:
        checks.append(check_service("producer", producer_url + "/api/health?deep=1"))
    if "worker" in roles and settings.worker_url:
        checks.append(check_service("worker", settings.worker_url.rstrip("/") + "/readyz"))
    return checks


def render(checks: list[Check]) -> None:
    from rich.table import Table

    from lib.cli.output import console

    marks = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "[dim]-[/]"}
    table = Table("check", "status", "target", "detail", title="cs doctor")
    for item in checks:
        table.add_row(item.name, marks[item.ok], item.target, item.detail)
    out = console()
    out.print(table)
    failed = [c.name for c in checks if c.failed]
    out.print(
        f"[bold red]{len(failed)} problem(s): {', '.join(failed)}[/]" if failed else "all good"
    )


def doctor(args: argparse.Namespace) -> int:
    from lib.cli.env import base_url

    checks = run(args.role, base_url(args.base_url))
    render(checks)
    return 1 if any(c.failed for c in checks) else 0
