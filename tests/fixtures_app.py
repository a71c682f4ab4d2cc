"""Fixtures and helpers for the worker and producer tests: the real services, built in-process.

Redis and Postgres are the session's real servers (conftest.py). The paid HTTP APIs are replaced
by the project's own local servers: the offline LLM and the QStash-compatible dev broker. Loaded
by `tests/test_worker.py` and `tests/test_service.py` through `pytest_plugins` (never imported
directly at run time, so pytest can load it as a plugin).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from flask import Flask
from support import free_port, serve_wsgi

from lib import config, state, store
from lib.config import DEV_JWT_SECRET, Settings
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN
from lib.state import State
from lib.store import Store

RESUME = (
    "Jordan Lee, backend engineer. Python, Flask, PostgreSQL, Redis, Docker, AWS. "
    "Built a settlement service handling 2M transactions a day."
)
JOB_DESCRIPTION = "Senior Python engineer for an AI platform: queues, workers, SSE, Postgres."


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
    redis_url: str, database_url: str, redis_prefix: str, llm_url: str
) -> dict[str, Any]:
    """Settings overrides shared by the worker and the producer in one test."""
    return {
        # Said explicitly: production is the default, and it refuses the public dev keys below.
        "app_env": "development",
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
        "lease_ttl_seconds": 2,
        "supabase_jwt_secret": DEV_JWT_SECRET,
        "sweep_interval_seconds": 0,
        "log_format": "text",
    }


@dataclass
class Db:
    """Read-only views of the test database, straight through psycopg."""

    url: str

    def one(self, sql: str, *params: Any) -> Any:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def job(self, job_id: str) -> dict[str, Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(
                "select status, attempts, result, error, enqueued_at, started_at, finished_at,"
                " tier, cost, user_id::text from cs_jobs where id = %s",
                (job_id,),
            )
            row = cur.fetchone()
            assert row is not None, f"no job {job_id}"
            names = [d.name for d in cur.description or []]
        return dict(zip(names, row, strict=True))

    def jobs_of(self, user_id: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select id::text, status, tier from cs_jobs where user_id = %s order by seq",
                (user_id,),
            ).fetchall()
        return [{"id": r[0], "status": r[1], "tier": r[2]} for r in rows]

    def coins(self, user_id: str) -> int | None:
        value = self.one("select coins from cs_balances where user_id = %s", user_id)
        return None if value is None else int(value)

    def ledger(self, job_id: str) -> list[tuple[str, int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select reason, amount from cs_ledger where job_id = %s order by id", (job_id,)
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def ledger_of(self, user_id: str) -> list[tuple[str, int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select reason, amount from cs_ledger where user_id = %s order by id", (user_id,)
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def free_used(self, user_id: str) -> int:
        value = self.one(
            "select coalesce(sum(used), 0) from cs_free_usage where user_id = %s", user_id
        )
        return int(value)


@pytest.fixture
def db(database_url: str) -> Db:
    return Db(database_url)


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]


def stream_of(st: State, job_id: str) -> list[Event]:
    """Every entry of the job's Redis stream, oldest first."""
    return [
        Event(entry_id, fields.get("t", ""), json.loads(fields.get("d", "{}")))
        for entry_id, fields in st.read(job_id, "0", 10_000)
    ]


@dataclass
class Created:
    job_id: str
    user_id: str
    tier: str
    cost: int


@dataclass
class WorkerEnv:
    """One test's worker: settings, real store/state/LLM, executor and Flask app."""

    settings: Settings
    store: Store
    state: State
    executor: Any
    app: Flask
    overrides: dict[str, Any]

    def stream(self, job_id: str) -> list[Event]:
        return stream_of(self.state, job_id)

    def lease_held(self, job_id: str) -> bool:
        return bool(self.state.backend.command("EXISTS", self.state.keys.lease(job_id)))

    def create_job(
        self,
        resume: str = RESUME,
        *,
        kind: str = "job_match",
        tier: str = "paid",
        cost: int = 1,
        user_id: str | None = None,
    ) -> Created:
        """Insert, charge and admit a job the way the producer does, without publishing."""
        job_id, user = str(uuid.uuid4()), user_id or str(uuid.uuid4())
        outcome = self.store.submit(
            job_id=job_id,
            user_id=user,
            kind=kind,
            tier=tier,
            cost=cost,
            input={"resume_text": f"{resume} ({job_id})", "job_description": JOB_DESCRIPTION},
            idempotency_key=None,
            request_hash=job_id,
        )
        assert outcome["outcome"] == "created", outcome
        self.state.admit(job_id, tier, user)
        return Created(job_id, user, tier, cost if tier == "paid" else 0)


@pytest.fixture
def make_worker(
    base_settings: dict[str, Any],
) -> Iterator[Callable[..., WorkerEnv]]:
    """Build a worker (settings overrides as keyword arguments); torn down after the test."""
    from lib.executor import Executor
    from lib.llm import LLM
    from lib.metrics import Metrics
    from worker.app import create_app

    built: list[WorkerEnv] = []
    # create_app configures the root logger for the process; give pytest's logging back after.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def build(**overrides: Any) -> WorkerEnv:
        merged = {**base_settings, **overrides}
        settings = config.load("worker", **merged)
        st = state.from_settings(settings)
        sto = store.from_settings(settings, pool_size=8)
        executor = Executor(settings, sto, st, LLM(settings), Metrics())
        app = create_app({"executor": executor, **merged})
        env = WorkerEnv(settings, sto, st, executor, app, merged)
        built.append(env)
        return env

    yield build
    for env in built:
        env.executor.close()
        env.store.close()
        env.state.close()
    root.handlers[:] = handlers
    root.setLevel(level)


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
