"""The worker's /v1/execute (worker/app.py) on the real executor, Redis, Postgres and offline LLM:
signed deliveries run the job; unsigned, mis-signed and duplicate deliveries do not.

Deliveries are signed exactly as QStash signs them (`lib.queue.signing.sign`) for the worker's
public execute URL, and sent through Flask's test client (helpers/worker.py). Every test checks the
database through psycopg and the job's Redis stream, not just the HTTP answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jwt
import pytest
from helpers.worker import assert_untouched, body_of, deliver, statuses
from werkzeug.test import TestResponse

from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, body_hash, sign

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv


OTHER_KEY = "sig_0000000000000000000000000000"


# Delivery -------------------------------------------------------------------------------------


def test_a_signed_delivery_runs_the_job_to_success_and_frees_its_slots(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()
    assert env.state.live("paid") == 1

    response = deliver(env, job)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "succeeded"
    row = db.job(job.job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 1 and row["error"] is None
    assert set(row["result"]) >= {"score", "strengths", "gaps", "summary"}
    events = env.stream(job.job_id)
    assert [e.type for e in events[-2:]] == ["result", "status"]
    assert events[-2].data["result"] == row["result"]
    assert statuses(events) == [("running", 1), ("succeeded", 1)]
    assert any(e.type == "delta" for e in events)
    assert env.state.live("paid") == 0
    assert env.state.done(job.job_id) == "succeeded"
    assert not env.lease_held(job.job_id)
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert db.coins(job.user_id) == 4


def test_a_delivery_signed_with_the_next_key_is_accepted(env: WorkerEnv, db: Db) -> None:
    job = env.create_job()
    raw = body_of(job)

    response = deliver(
        env, job, signature=sign(DEV_NEXT_SIGNING_KEY, env.settings.execute_url, raw)
    )

    assert response.status_code == 200
    assert db.job(job.job_id)["status"] == "succeeded"


def _no_body_claim(url: str, raw: bytes) -> str:
    now = int(time.time())
    claims = {"iss": "Upstash", "sub": url, "exp": now + 300, "nbf": now, "iat": now}
    return jwt.encode(claims, DEV_CURRENT_SIGNING_KEY, algorithm="HS256")


def _future_nbf(url: str, raw: bytes) -> str:
    now = int(time.time())
    claims = {
        "iss": "Upstash",
        "sub": url,
        "exp": now + 600,
        "nbf": now + 120,
        "iat": now,
        "body": body_hash(raw),
    }
    return jwt.encode(claims, DEV_CURRENT_SIGNING_KEY, algorithm="HS256")


HOSTILE: dict[str, Callable[[str, bytes], str | None]] = {
    "no header": lambda url, raw: None,
    "another key": lambda url, raw: sign(OTHER_KEY, url, raw),
    "another sub": lambda url, raw: sign(DEV_CURRENT_SIGNING_KEY, url + "-elsewhere", raw),
    "the failure callback's sub": lambda url, raw: sign(
        DEV_CURRENT_SIGNING_KEY, url.replace("/v1/execute", "/v1/failed"), raw
    ),
    "a tampered body": lambda url, raw: sign(
        DEV_CURRENT_SIGNING_KEY, url, raw.replace(b'"retries":3', b'"retries":9')
    ),
    "expired beyond the tolerance": lambda url, raw: sign(
        DEV_CURRENT_SIGNING_KEY, url, raw, now=time.time() - 400
    ),
    "nbf in the future": _future_nbf,
    "no body claim": _no_body_claim,
    "not a jwt": lambda url, raw: "not-a-jwt",
}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_a_delivery_with_a_hostile_signature_gets_401_and_changes_nothing(
    env: WorkerEnv, db: Db, attack: str
) -> None:
    job = env.create_job()
    raw = body_of(job)
    signature = HOSTILE[attack](env.settings.execute_url, raw)

    response = deliver(env, job, signature=signature, body=raw)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert_untouched(env, db, job)


def test_a_signature_expired_within_the_clock_tolerance_is_still_accepted(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()
    raw = body_of(job)
    signature = sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw, now=time.time() - 320)

    assert deliver(env, job, signature=signature).status_code == 200
    assert db.job(job.job_id)["status"] == "succeeded"


def test_a_signed_but_malformed_delivery_body_is_refused_as_non_retryable(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()
    raw = b'{"job_id": 42}'

    response = deliver(env, job, body=raw)

    assert response.status_code == 489
    assert response.headers["Upstash-NonRetryable-Error"] == "true"
    assert_untouched(env, db, job)


# Duplicates -----------------------------------------------------------------------------------


def test_two_concurrent_deliveries_of_one_job_run_the_handler_once(env: WorkerEnv, db: Db) -> None:
    # About 2.5 s of output: longer than the 2 s lease, so the heartbeat must renew it.
    job = env.create_job("[[llm:slow=10]]")
    gate = threading.Barrier(2)
    answers: list[TestResponse] = []

    def run() -> None:
        gate.wait(5)
        answers.append(deliver(env, job))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 429], [a.get_json() for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1
    row = db.job(job.job_id)
    assert row["status"] == "succeeded" and row["attempts"] == 1
    events = env.stream(job.job_id)
    assert statuses(events) == [("running", 1), ("succeeded", 1)]
    assert [e.type for e in events].count("result") == 1
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert env.state.live("paid") == 0


def test_a_late_duplicate_after_success_answers_200_and_runs_nothing(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()
    assert deliver(env, job).status_code == 200
    before_row, before_events = db.job(job.job_id), env.stream(job.job_id)

    response = deliver(env, job, retried=1)

    assert response.status_code == 200
    assert response.get_json()["status"] == "succeeded"
    after = db.job(job.job_id)
    assert after["attempts"] == 1
    assert after["result"] == before_row["result"]
    assert after["finished_at"] == before_row["finished_at"]
    assert env.stream(job.job_id) == before_events
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert env.state.live("paid") == 0
