"""The worker's cancels, drain and health (worker/app.py) on the real executor, Redis, Postgres
and offline LLM.

Deliveries are signed exactly as QStash signs them (`lib.queue.signing.sign`) for the worker's
public execute URL, and sent through Flask's test client (helpers/worker.py). Every test checks the
database through psycopg and the job's Redis stream, not just the HTTP answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from helpers.net import free_port, wait_for
from helpers.worker import assert_untouched, deliver
from werkzeug.test import TestResponse

if TYPE_CHECKING:
    from helpers.worker import Created, Db, WorkerEnv


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
