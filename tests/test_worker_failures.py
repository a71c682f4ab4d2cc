"""The worker's failures (worker/app.py): retried LLM and store failures, the final failure, and
QStash's failure callback (/v1/failed), on the real executor, Redis, Postgres and offline LLM.

Deliveries are signed exactly as QStash signs them (`lib.queue.signing.sign`) for the worker's
public execute URL, and sent through Flask's test client (helpers/worker.py). Every test checks the
database through psycopg and the job's Redis stream, not just the HTTP answer.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from helpers.net import free_port
from helpers.worker import assert_untouched, body_of, deliver, failure_callback, statuses

from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv


# Failures -------------------------------------------------------------------------------------


def test_a_transient_llm_failure_is_retried_by_the_broker_and_then_succeeds(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job("[[llm:fail_once=503]]")

    first = deliver(env, job, retried=0)

    assert first.status_code == 503
    assert int(first.headers["Retry-After"]) >= 1
    assert "Upstash-NonRetryable-Error" not in first.headers
    row = db.job(job.job_id)
    assert row["status"] == "running" and row["attempts"] == 1 and row["finished_at"] is None
    events = env.stream(job.job_id)
    error = next(e for e in events if e.type == "error")
    assert error.data["retryable"] is True and error.data["code"] == "llm_unavailable"
    assert statuses(events) == [("running", 1), ("retrying", 1)]
    assert env.state.done(job.job_id) is None
    assert env.state.live("paid") == 1  # the job still counts while the broker holds it
    assert not env.lease_held(job.job_id)

    second = deliver(env, job, retried=1)

    assert second.status_code == 200
    row = db.job(job.job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 2
    events = env.stream(job.job_id)
    assert statuses(events) == [("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 2)]
    restart = next(i for i, e in enumerate(events) if e.type == "status" and e.data["attempt"] == 2)
    later_deltas = {e.data["attempt"] for e in events[restart:] if e.type == "delta"}
    assert later_deltas == {2}
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert env.state.live("paid") == 0


def test_a_failure_on_the_last_attempt_is_final_and_refunds_once(env: WorkerEnv, db: Db) -> None:
    job = env.create_job("[[llm:fail=500]]")

    # The signed body says no retries: this first attempt is the last one.
    response = deliver(env, job, retries=0)

    assert response.status_code == 489
    assert response.headers["Upstash-NonRetryable-Error"] == "true"
    row = db.job(job.job_id)
    assert row["status"] == "failed" and row["error"]["code"] == "llm_unavailable"
    assert row["result"] is None
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.coins(job.user_id) == 5
    events = env.stream(job.job_id)
    assert events[-1].type == "status" and events[-1].data["status"] == "failed"
    assert [e.data["status"] for e in events if e.type == "status"].count("failed") == 1
    assert env.state.live("paid") == 0

    again = deliver(env, job, retries=0)

    assert again.status_code == 200
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert env.stream(job.job_id) == events


def test_a_retryable_failure_before_the_last_attempt_is_not_final(env: WorkerEnv, db: Db) -> None:
    job = env.create_job("[[llm:fail=500]]")

    response = deliver(env, job, retried=1, retries=3)

    assert response.status_code == 503
    assert db.job(job.job_id)["status"] == "running"
    assert db.ledger(job.job_id) == [("debit", -1)]


def test_invalid_json_from_the_model_fails_the_job_permanently_after_one_repair_and_refunds(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job("[[llm:invalid_json]]")  # nobody watches: no output was delivered

    response = deliver(env, job)

    assert response.status_code == 489
    assert response.headers["Upstash-NonRetryable-Error"] == "true"
    row = db.job(job.job_id)
    assert row["status"] == "failed" and row["error"]["code"] == "invalid_model_output"
    assert row["attempts"] == 2  # the repair attempt
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.coins(job.user_id) == 5
    events = env.stream(job.job_id)
    assert events[-2].type == "error" and events[-2].data["code"] == "invalid_model_output"
    assert events[-2].data["retryable"] is False
    assert statuses(events)[-1] == ("failed", 2)
    assert env.state.live("paid") == 0


def test_a_delivery_that_finds_the_database_down_does_not_block_the_next_one(
    env: WorkerEnv, db: Db
) -> None:
    from lib.executor import Executor
    from lib.store import Store
    from lib.store.backends import PostgresBackend
    from worker.app import create_app

    job = env.create_job()
    down_store = Store(
        PostgresBackend(f"postgresql://cs@127.0.0.1:{free_port()}/cs", timeout=0.5),
        initial_coins=5,
        free_daily=3,
    )
    down = Executor(env.settings, down_store, env.state, env.executor.llm)
    try:
        down_app = create_app({"executor": down, **env.overrides})
        raw = body_of(job)
        first = down_app.test_client().post(
            "/v1/execute",
            data=raw,
            headers={
                "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
                "Upstash-Retried": "0",
            },
        )
    finally:
        down.close()
        down_store.close()

    # No Retry-After on an outage: QStash's own backoff spaces the retries (tests/test_outage.py).
    assert first.status_code == 503 and "Retry-After" not in first.headers
    assert db.job(job.job_id)["attempts"] == 0
    assert env.state.live("paid") == 1
    assert not env.lease_held(job.job_id)
    assert deliver(env, job, retried=1).status_code == 200


# Failure callback -----------------------------------------------------------------------------


def test_the_failure_callback_fails_a_queued_job_refunds_once_and_closes_its_stream(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()

    response = failure_callback(env, job)

    assert response.status_code == 200 and response.get_json()["changed"] is True
    row = db.job(job.job_id)
    assert row["status"] == "failed" and row["error"]["code"] == "retries_exhausted"
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.coins(job.user_id) == 5
    events = env.stream(job.job_id)
    assert statuses(events) == [("failed", 0)]
    assert env.state.done(job.job_id) == "failed"
    assert env.state.live("paid") == 0

    again = failure_callback(env, job)

    assert again.status_code == 200 and again.get_json()["changed"] is False
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.job(job.job_id)["finished_at"] == row["finished_at"]
    assert env.stream(job.job_id) == events


def test_the_failure_callback_fails_a_job_left_running_by_retries(env: WorkerEnv, db: Db) -> None:
    job = env.create_job("[[llm:fail=503]]")
    assert deliver(env, job, retried=2, retries=3).status_code == 503
    assert db.job(job.job_id)["status"] == "running"

    response = failure_callback(env, job)

    assert response.status_code == 200 and response.get_json()["changed"] is True
    assert db.job(job.job_id)["status"] == "failed"
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    events = env.stream(job.job_id)
    assert statuses(events) == [("running", 1), ("retrying", 1), ("failed", 1)]
    assert env.state.live("paid") == 0


def test_the_failure_callback_for_a_succeeded_job_changes_nothing(env: WorkerEnv, db: Db) -> None:
    job = env.create_job()
    assert deliver(env, job).status_code == 200
    before_row, before_events = db.job(job.job_id), env.stream(job.job_id)

    response = failure_callback(env, job)

    assert response.status_code == 200 and response.get_json()["changed"] is False
    assert db.job(job.job_id) == before_row
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert env.stream(job.job_id) == before_events


def test_a_failure_callback_with_a_bad_signature_is_refused(env: WorkerEnv, db: Db) -> None:
    job = env.create_job()
    raw = b'{"status":500,"sourceBody":"%s"}' % base64.b64encode(body_of(job))

    response = env.app.test_client().post(
        "/v1/failed",
        data=raw,
        headers={"Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw)},
    )

    assert response.status_code == 401
    assert_untouched(env, db, job)
