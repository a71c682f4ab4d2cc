"""Session-wide real servers: Redis and Postgres, embedded unless REDIS_URL / DATABASE_URL are set.

Every test gets its own Redis key prefix, so tests never see each other's keys even on a shared
server. With DATABASE_URL set, the suite creates (and drops) a database of its own on that server.
`local_stack` starts the whole local stack (`scripts.stack.devstack.Stack`) on those servers;
`e2e_stack` is the end-to-end suite's stack, once on each profile (`local`, `cloud`).

This is the suite's one home for fixtures: the in-process worker (`make_worker`, `db`, the offline
LLM) and the dev broker harness (`make_broker`, `dest`) are here too. Plain helpers (no fixtures)
are in `tests/helpers/`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from flask import Flask
from helpers.broker import SCALE, Destination, RunningBroker, mount
from helpers.detached import DetachedEnv
from helpers.events import Clock
from helpers.net import SERVICE_ROLE_KEY, UPSTASH_TOKEN, free_port, serve_wsgi
from helpers.offline_llm import Llm
from helpers.pgbouncer import transaction_pooler
from helpers.producer import ProducerEnv
from helpers.worker import Db, WorkerEnv
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from qstash import QStash
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import lib.state
import lib.store
from lib import config
from lib.config import DEV_JWT_SECRET
from lib.queue.plans import Plan
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN
from lib.store import migrate
from scripts.stack import embedded

if TYPE_CHECKING:
    from scripts.stack.devstack import Stack

# The test bucket's file size limit, and IMAGE_MAX_BYTES of the test settings.
IMAGE_BUCKET_LIMIT = 256 * 1024


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


@pytest.fixture(scope="session")
def pgbouncer_url(database_url: str) -> Iterator[str]:
    """The test database through a real PgBouncer in transaction mode, with one server
    connection: every client shares it, one transaction at a time."""
    with transaction_pooler(database_url, pool_size=1) as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test."""
    return f"cs-test:{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def upstash_url(redis_url: str) -> Iterator[str]:
    """An Upstash-REST stand-in that forwards to the real test Redis."""
    from scripts.fakes.upstash_standin import create_app

    with serve_wsgi(create_app(redis_url, UPSTASH_TOKEN)) as url:
        yield url


@pytest.fixture(scope="session")
def postgrest_url(database_url: str) -> Iterator[str]:
    """A PostgREST stand-in serving /rest/v1/rpc/<fn> from the real test Postgres."""
    from scripts.fakes.postgrest_standin import create_app

    with serve_wsgi(create_app(database_url, SERVICE_ROLE_KEY)) as url:
        yield url


@pytest.fixture(scope="session")
def storage_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """The Supabase Storage stand-in's app, on a scratch folder: the `job-images` bucket,
    limited to IMAGE_BUCKET_LIMIT bytes of PNG, JPEG or WebP (as declared by the uploader)."""
    from scripts.fakes.storage_standin import Bucket, create_app

    bucket = Bucket("job-images", IMAGE_BUCKET_LIMIT, ("image/png", "image/jpeg", "image/webp"))
    return create_app(tmp_path_factory.mktemp("storage"), DEV_JWT_SECRET, [bucket])


@pytest.fixture(scope="session")
def storage_url(storage_app: Flask) -> Iterator[str]:
    """The Storage stand-in's API base (STORAGE_URL): `<server>/storage/v1`."""
    with serve_wsgi(storage_app) as url:
        yield f"{url}/storage/v1"


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
    from scripts.stack.devstack import Ports, Stack

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
            # Said explicitly (detached is the default): these suites kill and drain the worker
            # and count on QStash, which holds an inline request, to redeliver; detached, only
            # the reconciler heals such a job, and it is off here. `make demo`, `make dev` and
            # chaos run the default.
            "EXECUTION_MODE": "inline",
            # The session's stacks share one database: a reconciler would take the others'
            # running jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
            "RECONCILE_CRON": "",
            "STORAGE_STANDIN_ROOT": str(tmp_path_factory.mktemp(f"{name}-storage")),
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
    from scripts.stack.devstack import Ports, Stack

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
        # As `local_stack`: QStash redelivers a killed or drained worker's held request.
        "EXECUTION_MODE": "inline",
        # The session's stacks share one database: a reconciler would take the others' running
        # jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
        "RECONCILE_CRON": "",
        "STORAGE_STANDIN_ROOT": str(tmp_path_factory.mktemp(f"{request.param}-storage")),
    }
    with Stack(
        ports=ports, profile=request.param, overrides=overrides, log_dir=Path(logs), quiet=True
    ) as running:
        yield running


@pytest.fixture(scope="module")
def boxes_stack(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A local stack with two worker boxes (WORKERS=2: `worker` and `worker2`, WORKER_URLS lists
    both) and the reconciler on its dev-broker schedule, on a database of its own: the other
    stacks' running jobs, which it would take for dead, are elsewhere. Beats every 0.5 s."""
    from scripts.stack.devstack import Ports, Stack

    name = f"cs_boxes_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(database_url), "dbname": name})
    migrate.apply(url)
    overrides = {
        "WORKERS": "2",
        "REDIS_URL": redis_url,
        "DATABASE_URL": url,
        "REDIS_PREFIX": f"boxes-{uuid.uuid4().hex[:6]}:",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "LOG_FORMAT": "json",
        "INITIAL_COINS": "50",
        "USER_MAX_ACTIVE_PAID": "10",
        "JOB_RETRIES": "3",
        "JOB_RETRY_DELAY": "300 * (1 + retried)",
        "LEASE_TTL_SECONDS": "2",
        "BOX_HEARTBEAT_SECONDS": "0.5",
        "WORKER_MAX_JOBS": "8",
        "WEB_CONCURRENCY": "1",
        "WORKER_DRAIN_SECONDS": "1",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "100",
        # A `* * * * *` tick every 3 s; a job undelivered for 4 s is re-published.
        "DEV_BROKER_TIME_SCALE": "0.05",
        "RECONCILE_CRON": "* * * * *",
        "RECONCILE_QUEUED_AFTER_SECONDS": "4",
        "RECONCILE_MAX_HEALS": "8",
    }
    logs = Path(tmp_path_factory.mktemp("boxes-stack-logs"))
    try:
        with Stack(
            ports=Ports.free(), profile="local", overrides=overrides, log_dir=logs, quiet=True
        ) as running:
            yield running
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


# lib/events.py's tests ---------------------------------------------------------------------------


@pytest.fixture
def state(redis_url: str, redis_prefix: str) -> Iterator[lib.state.State]:
    """A `State` on the test Redis over TCP (test_state.py's `state` runs on both adapters)."""
    from lib.state.tcp import TcpBackend

    backend = TcpBackend(redis_url)
    yield lib.state.State(backend, prefix=redis_prefix)
    backend.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


# The offline LLM's own tests --------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[..., Llm]]:
    """Start offline LLM apps of this test's own; they all stop when it ends."""
    from scripts.fakes.offline_llm import create_app

    with ExitStack() as stack:

        def start(tokens_per_second: float = 2000.0, hang_seconds: float = 10.0) -> Llm:
            app = create_app(tokens_per_second=tokens_per_second, hang_seconds=hang_seconds)
            return Llm(app, stack.enter_context(serve_wsgi(app)))

        yield start


@pytest.fixture(scope="module")
def llm() -> Iterator[Llm]:
    """One fast offline LLM app shared by a module's tests that need no state of their own
    (test_llm.py's `llm` is the product's client instead)."""
    from scripts.fakes.offline_llm import create_app

    app = create_app(tokens_per_second=2000.0, hang_seconds=10.0)
    with serve_wsgi(app) as url:
        yield Llm(app, url)


# The worker, in-process --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def llm_url() -> Iterator[str]:
    """The offline LLM on loopback, fast enough that a normal job takes well under a second."""
    from scripts.fakes.offline_llm import EXTENSION, create_app

    app = create_app(tokens_per_second=2000)
    with serve_wsgi(app) as url:
        yield url
    app.extensions[EXTENSION].stop.set()


@pytest.fixture
def base_settings(
    redis_url: str, database_url: str, redis_prefix: str, llm_url: str, storage_url: str
) -> dict[str, Any]:
    """Settings overrides shared by the worker and the producer in one test."""
    return {
        # Said explicitly: production is the default, and it refuses the public dev keys below.
        "app_env": "development",
        # The in-process worker is driven through Flask's test client, each delivery answered
        # when its job ends: QStash holding the request (detached is the default; `make_detached`
        # serves that mode).
        "execution_mode": "inline",
        "redis_url": redis_url,
        "database_url": database_url,
        "redis_prefix": redis_prefix,
        # Nothing listens here: the dev broker's deliveries fail and the worker is driven
        # through Flask's test client, which signs for this same URL.
        "worker_url": f"http://127.0.0.1:{free_port()}",
        "qstash_current_signing_key": DEV_CURRENT_SIGNING_KEY,
        "qstash_next_signing_key": DEV_NEXT_SIGNING_KEY,
        "qstash_token": DEV_TOKEN,
        "openai_base_url": f"{llm_url}/v1",
        "openai_api_key": "x",
        "llm_model_free": "openai:offline",
        "llm_model_paid": "openai:offline",
        "llm_vision_model_free": "openai:offline",
        "llm_vision_model_paid": "openai:offline",
        "storage_url": storage_url,
        "supabase_service_role_key": SERVICE_ROLE_KEY,
        "image_max_bytes": IMAGE_BUCKET_LIMIT,
        "lease_ttl_seconds": 2,
        "supabase_jwt_secret": DEV_JWT_SECRET,
        "sweep_interval_seconds": 0,
        "log_format": "text",
    }


@pytest.fixture
def db(database_url: str) -> Db:
    return Db(database_url)


@pytest.fixture
def make_worker(
    base_settings: dict[str, Any],
) -> Iterator[Callable[..., WorkerEnv]]:
    """Build a worker (settings overrides as keyword arguments; `pool_size` and `store_timeout`
    size its store's pool); torn down after the test."""
    from lib.executor import Executor
    from lib.llm import LLM
    from lib.metrics import Metrics
    from lib.storage import Storage
    from worker.app import create_app

    built: list[WorkerEnv] = []
    storages: list[Storage] = []
    # create_app configures the root logger for the process; give pytest's logging back after.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def build(*, pool_size: int = 8, store_timeout: float = 5.0, **overrides: Any) -> WorkerEnv:
        merged = {**base_settings, **overrides}
        settings = config.load("worker", **merged)
        st = lib.state.from_settings(settings)
        sto = lib.store.from_settings(settings, pool_size=pool_size, timeout=store_timeout)
        storage = Storage(settings.storage_api_url, SERVICE_ROLE_KEY, settings.storage_bucket)
        storages.append(storage)
        executor = Executor(
            settings, sto, st, LLM(settings), Metrics(), read_image=storage.download
        )
        app = create_app({"executor": executor, **merged})
        env = WorkerEnv(settings, sto, st, executor, app, merged)
        built.append(env)
        return env

    yield build
    for env in built:
        env.executor.close()
        env.store.close()
        env.state.close()
    for storage in storages:
        storage.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def make_detached(make_worker: Callable[..., WorkerEnv]) -> Iterator[Callable[..., DetachedEnv]]:
    """Build a detached worker (EXECUTION_MODE=detached) served on a loopback port, with a dev
    broker of its own delivering to it (`time_scale` shortens the broker's delays); settings
    overrides as keyword arguments. Its background jobs are drained after the test."""
    from lib.queue.producer import QStashPublisher
    from scripts.fakes.dev_broker import create_app as broker_app

    with ExitStack() as stack:

        def build(
            *, time_scale: float = 0.01, limits: str | Plan = "payg", **overrides: Any
        ) -> DetachedEnv:
            broker = broker_app(time_scale=time_scale, limits=limits)
            broker_url = stack.enter_context(serve_wsgi(broker))
            stack.callback(broker.broker.stop)  # type: ignore[attr-defined]
            port = free_port()
            settings: dict[str, Any] = {
                "execution_mode": "detached",
                "worker_url": f"http://127.0.0.1:{port}",
                "qstash_url": broker_url,
                "worker_drain_seconds": 1,
                "detached_wait_seconds": 5,
                **overrides,
            }
            env = make_worker(**settings)
            stack.enter_context(serve_wsgi(env.app, port))
            detached = env.app.extensions["detached"]
            stack.callback(detached.shutdown, 10)
            return DetachedEnv(env, broker_url, broker, QStashPublisher(env.settings, timeout=3.0))

        yield build


@pytest.fixture
def env(make_worker: Callable[..., WorkerEnv]) -> WorkerEnv:
    """A worker on the default test settings (test_service.py's `env` is a producer instead)."""
    return make_worker()


@pytest.fixture
def make_producer(
    base_settings: dict[str, Any], dev_broker: str
) -> Iterator[Callable[..., ProducerEnv]]:
    """Build a producer on the real services; settings overrides as keyword arguments."""
    from lib.auth import from_settings as verifier_from_settings
    from lib.queue.producer import QStashPublisher
    from lib.service import Producer
    from lib.storage import from_settings as storage_from_settings

    built: list[Producer] = []

    def build(**overrides: Any) -> ProducerEnv:
        settings = config.load("api", **{**base_settings, "qstash_url": dev_broker, **overrides})
        producer = Producer(
            settings,
            lib.store.from_settings(settings, pool_size=4),
            lib.state.from_settings(settings),
            QStashPublisher(settings, timeout=3.0),
            verifier_from_settings(settings),
            storage_from_settings(settings),
        )
        built.append(producer)
        return ProducerEnv(settings, producer, dev_broker)

    yield build
    for producer in built:
        producer.store.close()
        producer.state.close()
        if producer.storage is not None:
            producer.storage.close()


@pytest.fixture
def dev_broker() -> Iterator[str]:
    """A fresh QStash-compatible dev broker; its deliveries go nowhere (no worker listens)."""
    from scripts.fakes.dev_broker import create_app

    app = create_app()
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.broker.stop()  # type: ignore[attr-defined]


# The dev broker harness ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mounts() -> Iterator[tuple[str, DispatcherMiddleware]]:
    """One loopback server for the module; each test mounts its own apps under a fresh prefix.

    Starting and shutting down a server per test costs half a second each; a fresh prefix also
    keeps a stopped broker's last in-flight request from reaching the next test's destination.
    """
    dispatcher = DispatcherMiddleware(NotFound(), {})
    with serve_wsgi(dispatcher) as url:
        yield url, dispatcher


@pytest.fixture
def make_broker(
    mounts: tuple[str, DispatcherMiddleware],
) -> Iterator[Callable[..., RunningBroker]]:
    """Start a broker on the given QStash plan (a name or a Plan); stopped after the test."""
    started: list[tuple[Flask, str]] = []

    def start(limits: str | Plan = "payg") -> RunningBroker:
        from scripts.fakes.dev_broker import create_app

        app = create_app(time_scale=SCALE, limits=limits)
        url, prefix = mount(mounts, app)
        started.append((app, prefix))
        return RunningBroker(url, app, QStash(DEV_TOKEN, base_url=url))

    yield start
    for app, prefix in started:
        app.broker.stop()  # type: ignore[attr-defined]
        del mounts[1].mounts[prefix]


@pytest.fixture
def broker(make_broker: Callable[..., RunningBroker]) -> RunningBroker:
    """A broker on the default plan (pay-as-you-go)."""
    return make_broker()


@pytest.fixture
def dest(mounts: tuple[str, DispatcherMiddleware]) -> Iterator[Destination]:
    destination = Destination()
    destination.url, prefix = mount(mounts, destination.app)
    try:
        yield destination
    finally:
        destination.release.set()
        del mounts[1].mounts[prefix]
    unsigned = [(d.path, d.signature_errors) for d in destination.deliveries if d.signature_errors]
    assert not unsigned, f"deliveries whose signature did not verify: {unsigned}"
