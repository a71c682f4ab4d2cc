"""The worker's HTTP surface (worker/app.py) on the real executor, Redis, Postgres and offline LLM.

Deliveries are signed exactly as QStash signs them (`lib.queue.signing.sign`) for the worker's
public execute URL, and sent through Flask's test client. Every test checks the database through
psycopg and the job's Redis stream, not just the HTTP answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jwt
import pytest
from support import free_port, wait_for
from werkzeug.test import TestResponse

from lib.queue.producer import message_body
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, body_hash, sign

if TYPE_CHECKING:
    from fixtures_app import Created, Db, Event, WorkerEnv

pytest_plugins = ("fixtures_app",)

OTHER_KEY = "sig_0000000000000000000000000000"


def statuses(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.data["status"], e.data["attempt"]) for e in events if e.type == "status"]


def body_of(job: Created, retries: int = 3) -> bytes:
    return message_body(job.job_id, job.user_id, job.tier, retries)


def deliver(
    env: WorkerEnv,
    job: Created,
    *,
    retried: int = 0,
    retries: int = 3,
    signature: str | None = "sign",
    body: bytes | None = None,
) -> TestResponse:
    """POST one QStash delivery of `job` to /v1/execute, signed with the current key."""
    raw = body if body is not None else body_of(job, retries)
    headers = {
        "Content-Type": "application/json",
        "Upstash-Retried": str(retried),
        "Upstash-Message-Id": f"msg_{job.job_id}",
    }
    if signature == "sign":
        signature = sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw)
    if signature is not None:
        headers["Upstash-Signature"] = signature
    return env.app.test_client().post("/v1/execute", data=raw, headers=headers)


def failure_callback(env: WorkerEnv, job: Created) -> TestResponse:
    """POST QStash's failure callback for `job`, shaped and signed as QStash sends it."""
    raw = json.dumps(
        {
            "status": 500,
            "retried": 3,
            "maxRetries": 3,
            "sourceMessageId": f"msg_{job.job_id}",
            "url": env.settings.execute_url,
            "sourceBody": base64.b64encode(body_of(job)).decode(),
        }
    ).encode()
    return env.app.test_client().post(
        "/v1/failed",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.failed_url, raw),
        },
    )


def assert_untouched(env: WorkerEnv, db: Db, job: Created) -> None:
    row = db.job(job.job_id)
    assert (row["status"], row["attempts"], row["started_at"]) == ("queued", 0, None)
    assert env.stream(job.job_id) == []
    assert env.state.live(job.tier) == 1
    assert env.state.done(job.job_id) is None
    assert db.ledger(job.job_id) == [("debit", -job.cost)]


@pytest.fixture
def env(make_worker: Callable[..., WorkerEnv]) -> WorkerEnv:
    return make_worker()


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


# Cancel and drain -----------------------------------------------------------------------------


def cancel_while_running(env: WorkerEnv) -> tuple[Created, TestResponse, float]:
    """Start a slow delivery, cancel the job as the user once output streams, and return
    (job, the delivery's answer, seconds from the cancel to that answer)."""
    from lib.auth import from_settings as verifier_from_settings
    from lib.queue.producer import DirectPublisher
    from lib.service import Producer

    producer = Producer(
        env.settings,
        env.store,
        env.state,
        DirectPublisher(env.settings),  # never called: cancel does not publish
        verifier_from_settings(env.settings),
    )
    job = env.create_job("[[llm:slow=30]]")  # about 8 s if nothing stops it
    env.state.watch(job.job_id, "tcp")  # a viewer, so the output streams as it comes
    answers: list[TestResponse] = []
    runner = threading.Thread(target=lambda: answers.append(deliver(env, job)))
    runner.start()
    wait_for(
        lambda: any(e.type == "delta" for e in env.stream(job.job_id)),
        timeout=10,
        what="the first delta",
    )
    cancelled_at = time.monotonic()
    assert producer.cancel(job.job_id, job.user_id).status == "cancelled"
    runner.join(6)
    assert not runner.is_alive(), "the attempt kept running after the cancel"
    return job, answers[0], time.monotonic() - cancelled_at


def test_cancelling_a_running_job_stops_the_attempt_and_refunds_once(
    env: WorkerEnv, db: Db
) -> None:
    job, answer, seconds = cancel_while_running(env)

    assert seconds < 3
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "cancelled"
    row = db.job(job.job_id)
    events = env.stream(job.job_id)
    # The output written before the cancel is kept as `result.partial` (none: no result).
    written = "".join(e.data["text"] for e in events if e.type == "delta")
    assert row["result"] == ({"partial": written} if written else None)
    assert row["status"] == "cancelled" and row["attempts"] == 1
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.coins(job.user_id) == 5
    terminal = [e for e in events if e.type == "status" and e.data["status"] != "running"]
    assert [e.data["status"] for e in terminal] == ["cancelled"]
    assert events[-1] == terminal[0]
    assert env.state.live("paid") == 0
    assert not env.lease_held(job.job_id)


def start_unwatched(env: WorkerEnv, job: Created) -> tuple[threading.Thread, list[TestResponse]]:
    """Deliver `job` in a thread; return once its attempt runs, holding its output (nobody
    watches), with the thread and the list its answer will be appended to."""
    answers: list[TestResponse] = []
    runner = threading.Thread(target=lambda: answers.append(deliver(env, job)))
    runner.start()
    wait_for(lambda: env.executor.running() == 1, timeout=10, what="the attempt to start")
    wait_for(lambda: env.lease_held(job.job_id), timeout=10, what="the lease")
    assert "delta" not in [e.type for e in env.stream(job.job_id)]  # held: nobody watches
    return runner, answers


def test_an_unwatched_attempt_holds_its_output_and_still_stops_soon_after_a_cancel(
    env: WorkerEnv, db: Db
) -> None:
    from lib.events import emit_terminal

    job = env.create_job("[[llm:slow=30]]")  # nobody watches: the text is held
    runner, answers = start_unwatched(env, job)
    cancelled_at = time.monotonic()
    emit_terminal(env.state, job.job_id, "cancelled", result=None, error=None, attempt=1)
    runner.join(10)
    assert not runner.is_alive(), "the attempt kept running after the cancel"
    # The heartbeat (every LEASE_TTL_SECONDS / 3) reads the cancel flag: no emit is needed.
    assert time.monotonic() - cancelled_at < 3
    assert answers[0].status_code == 200
    assert db.job(job.job_id)["status"] == "cancelled"


def test_a_viewer_arriving_mid_attempt_gets_the_output_at_once_not_at_the_next_heartbeat(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    env = make_worker(lease_ttl_seconds=60)  # the heartbeat comes every 20 s
    job = env.create_job("[[llm:slow=30]]")  # about 8 s of output
    runner, answers = start_unwatched(env, job)
    arrived = time.monotonic()
    assert env.state.watch(job.job_id, "tcp") is True  # what the SSE endpoint does
    wait_for(
        lambda: any(e.type == "delta" for e in env.stream(job.job_id)),
        timeout=5,
        what="the held output",
    )
    assert time.monotonic() - arrived < 5
    types = [e.type for e in env.stream(job.job_id)]
    assert types[0] == "status" and "result" not in types  # streamed while still running
    runner.join(30)
    assert answers and answers[0].status_code == 200


def test_a_cancelled_attempt_is_not_counted_as_a_succeeded_attempt(env: WorkerEnv) -> None:
    client = env.app.test_client()
    before = _attempts(client.get("/metrics").get_data(as_text=True))

    cancel_while_running(env)

    after = _attempts(client.get("/metrics").get_data(as_text=True))
    assert after.get("succeeded", 0) == before.get("succeeded", 0)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1


def test_a_draining_worker_refuses_new_deliveries_with_503_and_changes_nothing(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job()
    env.executor.drain()

    response = deliver(env, job)

    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.get_json()["error"]["code"] == "worker_shutting_down"
    assert_untouched(env, db, job)
    assert env.app.test_client().get("/readyz").status_code == 503


# Health ---------------------------------------------------------------------------------------


def _attempts(text: str) -> dict[str, float]:
    """cs_job_attempts_total of paid job_match attempts, by outcome label."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "cs_job_attempts_total" and (
                labels.get("kind"),
                labels.get("tier"),
            ) == ("job_match", "paid"):
                found[labels["outcome"]] = float(sample.value)
    return found


def test_health_readiness_and_metrics_answer(env: WorkerEnv) -> None:
    client = env.app.test_client()
    before = _attempts(client.get("/metrics").get_data(as_text=True)).get("succeeded", 0)
    assert deliver(env, env.create_job()).status_code == 200

    health = client.get("/healthz")
    ready = client.get("/readyz")
    metrics = client.get("/metrics")

    assert health.status_code == 200 and health.get_json()["ok"] is True
    assert ready.status_code == 200 and ready.get_json() == {"ok": True}
    assert metrics.status_code == 200
    assert metrics.content_type.startswith("text/plain")
    text = metrics.get_data(as_text=True)
    assert "cs_job_attempts_total" in text
    assert _attempts(text).get("succeeded") == before + 1


def test_readiness_fails_when_redis_is_unreachable(make_worker: Callable[..., WorkerEnv]) -> None:
    env = make_worker(redis_url=f"redis://127.0.0.1:{free_port()}")

    ready = env.app.test_client().get("/readyz")

    assert ready.status_code == 503 and ready.get_json() == {"ok": False}


def test_an_attempt_that_loses_its_lease_stops_without_deciding_anything(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job("[[llm:slow=10]]")
    env.state.watch(job.job_id, "tcp")
    results: list[TestResponse] = []
    # The last attempt: a lost lease must still not fail the job another attempt may own.
    runner = threading.Thread(target=lambda: results.append(deliver(env, job, retries=0)))
    runner.start()
    wait_for(lambda: any(e.type == "delta" for e in env.stream(job.job_id)), 10, what="a delta")
    env.state.backend.command("SET", env.state.keys.lease(job.job_id), "someone-else", "PX", 60000)
    runner.join(20)
    assert results and results[0].status_code == 503
    assert db.job(job.job_id)["status"] == "running"
    assert [e.data["status"] for e in env.stream(job.job_id) if e.type == "status"] == ["running"]
    assert env.state.backend.command("GET", env.state.keys.lease(job.job_id)) == "someone-else"
