"""Session-wide real servers: Redis and Postgres, embedded unless REDIS_URL / DATABASE_URL are set.

Every test gets its own Redis key prefix, so tests never see each other's keys even on a shared
server. With DATABASE_URL set, the suite creates (and drops) a database of its own on that server.
`local_stack` starts the whole local stack (`scripts.devstack.Stack`) on those servers;
`e2e_stack` is the end-to-end suite's stack, once on each profile (`local`, `cloud`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lib.store import migrate
from scripts import embedded

if TYPE_CHECKING:
    from scripts.devstack import Stack


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = embedded.start_redis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    base = os.environ.get("DATABASE_URL")
    if not base:
        server = embedded.start_postgres()
        try:
            migrate.apply(server.url)
            yield server.url
        finally:
            server.stop()
        return
    name = f"cs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(base), "dbname": name})
    try:
        migrate.apply(url)
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test."""
    return f"cs-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def upstash_url(redis_url: str) -> Iterator[str]:
    """An Upstash-REST stand-in that forwards to the real test Redis."""
    from support import serve_wsgi

    from scripts.upstash_standin import create_app

    with serve_wsgi(create_app(redis_url, UPSTASH_TOKEN)) as url:
        yield url


@pytest.fixture(scope="session")
def postgrest_url(database_url: str) -> Iterator[str]:
    """A PostgREST stand-in serving /rest/v1/rpc/<fn> from the real test Postgres."""
    from support import serve_wsgi

    from scripts.postgrest_standin import create_app

    with serve_wsgi(create_app(database_url, SERVICE_ROLE_KEY)) as url:
        yield url


@pytest.fixture(params=["tcp", "rest"])
def redis_backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[object]:
    """Each Redis adapter in turn: redis-py over TCP, upstash-redis over REST."""
    if request.param == "tcp":
        from lib.state.tcp import TcpBackend

        backend: object = TcpBackend(redis_url)
    else:
        from lib.state.rest import RestBackend

        backend = RestBackend(request.getfixturevalue("upstash_url"), UPSTASH_TOKEN)
    yield backend
    backend.close()  # type: ignore[attr-defined]


@pytest.fixture(params=["postgres", "supabase"])
def store_backend(request: pytest.FixtureRequest, database_url: str) -> Iterator[object]:
    """Each store adapter in turn: psycopg direct, supabase-py rpc through PostgREST."""
    if request.param == "postgres":
        from lib.store.backends import PostgresBackend

        backend: object = PostgresBackend(database_url, max_size=4)
    else:
        from lib.store.backends import SupabaseBackend

        backend = SupabaseBackend(request.getfixturevalue("postgrest_url"), SERVICE_ROLE_KEY)
    yield backend
    backend.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def local_stack(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., AbstractContextManager[Stack]]:
    """Start a stack the way `make dev` does, as a context manager:
    `local_stack(name, profile="local", **env)`.

    Offline LLM, dev broker, worker and producer (gunicorn), and the cloud profile's stand-ins,
    on free ports, on the session's Redis and Postgres, with the key prefix `<name>-<random>:`
    and JSON logs in a temporary folder. `env` is set on top (the tests' own limits and speeds).
    """
    from scripts.devstack import Ports, Stack

    @contextmanager
    def start(name: str, profile: str = "local", **env: str) -> Iterator[Stack]:
        ports = Ports.free()
        overrides = {
            "APP_ENV": "development",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "REDIS_PREFIX": f"{name}-{uuid.uuid4().hex[:6]}:",
            "OPENAI_API_KEY": "",
            "QSTASH_URL": "",
            "QSTASH_MODE": "broker",
            "LOG_FORMAT": "json",
            # The session's stacks share one database: a reconciler would take the others'
            # running jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
            "RECONCILE_CRON": "",
            **env,
        }
        logs = Path(tmp_path_factory.mktemp(f"{name}-stack-logs"))
        with Stack(
            ports=ports, profile=profile, overrides=overrides, log_dir=logs, quiet=True
        ) as running:
            yield running

    return start


@pytest.fixture(scope="module", params=["local", "cloud"])
def e2e_stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The end-to-end suite's stack, once per profile: `local`, and `cloud` (the producer on
    Upstash REST, supabase-py and vercel.json's rewritten paths; the worker under the session
    pooler's client cap), for each module that uses it. Tests may kill and restart its
    components; each test uses users of its own."""
    from scripts.devstack import Ports, Stack

    ports = Ports.free()
    logs = tmp_path_factory.mktemp(f"{request.param}-stack-logs")
    overrides = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:6]}:",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "QUEUE_MAX_FREE": "2",
        "USER_MAX_ACTIVE_FREE": "1",
        "USER_MAX_ACTIVE_PAID": "3",
        "FREE_DAILY_JOBS": "2",
        "INITIAL_COINS": "5",
        "JOB_RETRIES": "5",
        "JOB_RETRY_DELAY": "400 * (1 + retried)",
        "DEV_BROKER_TIME_SCALE": "1",
        "LEASE_TTL_SECONDS": "2",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "500",
        "WORKER_DRAIN_SECONDS": "2",
        "WEB_CONCURRENCY": "2",
        "LOG_FORMAT": "json",
        # The session's stacks share one database: a reconciler would take the others' running
        # jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
        "RECONCILE_CRON": "",
    }
    with Stack(
        ports=ports, profile=request.param, overrides=overrides, log_dir=Path(logs), quiet=True
    ) as running:
        yield running


UPSTASH_TOKEN = "upstash-test-token"  # noqa: S105
# The Supabase CLI's local service-role key shape: a JWT signed with the dev secret.
SERVICE_ROLE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UtZ"
    "GVtbyIsImV4cCI6MTk4MzgxMjk5Nn0.VkcJ801Bd30muD6WhyO-U6YR4hiCG96YZmkBFWN3QqI"
)
