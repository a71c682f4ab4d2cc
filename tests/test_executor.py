"""Executor paths that HTTP tests cannot reach quickly: the sweeper and the attempt limit."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from lib import config
from lib.events import JobEvents
from lib.executor import Executor
from lib.leases import Lease
from lib.queue import wire
from lib.state import State
from lib.state.tcp import TcpBackend
from lib.store import Store
from lib.store.backends import PostgresBackend
from lib.sweeper import Sweeper
from lib.verdict import Busy, Done


@pytest.fixture
def executor(redis_url: str, database_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    settings = config.load(
        "any",
        redis_url=redis_url,
        database_url=database_url,
        redis_prefix=redis_prefix,
        job_timeout_seconds=10,
        sweep_after_seconds=60,
        sweep_interval_seconds=0,
    )
    store = Store(PostgresBackend(database_url), initial_coins=5, free_daily=3)
    state = State(TcpBackend(redis_url), prefix=redis_prefix)
    ex = Executor(settings, store, state, llm=None)
    yield ex
    ex.close()
    store.close()
    state.close()


def test_the_sweeper_fails_refunds_and_closes_jobs_never_enqueued(
    executor: Executor, database_url: str
) -> None:
    user, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    executor.store.submit(
        job_id=job_id,
        user_id=user,
        kind="job_match",
        tier="paid",
        cost=2,
        input={"resume_text": "r", "job_description": "d"},
        idempotency_key=None,
        request_hash="h",
    )
    JobEvents(executor.state, job_id, 0).running()
    assert (
        job_id not in Sweeper(executor.settings, executor.store, executor.state).sweep()
    )  # too recent: its submit may still be publishing
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "update cs_jobs set created_at = now() - interval '2 hours' where id = %s", (job_id,)
        )
    assert job_id in Sweeper(executor.settings, executor.store, executor.state).sweep()
    job = executor.store.get_job(job_id, user)
    assert job and job.status == "failed" and job.error and job.error.code == "unavailable"
    assert executor.store.me(user).coins == 5
    assert executor.state.done(job_id) == "failed"
    assert Sweeper(executor.settings, executor.store, executor.state).sweep() == []


def test_an_attempt_past_the_job_timeout_is_stopped_retryably(executor: Executor) -> None:
    from lib.errors import RetryableError

    lease = Lease("j", "free", "u", "t", started=0.0)
    with pytest.raises(RetryableError) as caught:
        executor._check(lease)
    assert caught.value.code == "llm_timeout"


def test_a_failure_callback_waits_while_an_attempt_holds_the_job(executor: Executor) -> None:
    user, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    executor.store.submit(
        job_id=job_id,
        user_id=user,
        kind="job_match",
        tier="paid",
        cost=2,
        input={"resume_text": "r", "job_description": "d"},
        idempotency_key=None,
        request_hash="h",
    )
    executor.state.acquire(job_id, "paid", user, "running-attempt")
    deferred = executor.fail_delivery(job_id, user, "paid", "a duplicate gave up")
    assert isinstance(deferred, Busy) and deferred.seconds > 0
    answer = wire.answer(deferred)
    assert answer.status == 429 and int(answer.headers["Retry-After"]) >= 1
    job = executor.store.get_job(job_id, user)
    assert job and job.status == "queued"
    executor.state.release(job_id, "paid", user, "running-attempt")
    assert isinstance(executor.fail_delivery(job_id, user, "paid", "gave up"), Done)
    assert executor.store.get_job(job_id, user).status == "failed"  # type: ignore[union-attr]


def test_an_attempt_whose_lease_went_unrenewed_too_long_stops(executor: Executor) -> None:
    from lib.errors import RetryableError

    lease = Lease("j", "free", "u", "t", renewed=0.0)
    with pytest.raises(RetryableError) as caught:
        executor._check(lease)
    assert caught.value.code == "lease_lost"
