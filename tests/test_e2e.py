"""End to end: the stack started the way `make dev` starts it, driven over HTTP only: every kind,
streams and reconnects, cancels, failures and retries, a worker killed or drained, and what the
logs never carry. The API's refusals and limits are test_e2e_api.py.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid

import httpx
import pytest
from fixtures import e2e_suite
from helpers.net import wait_for
from helpers.stack import (
    JD,
    RESUME,
    User,
    assert_logs_clean,
    events,
    follow,
    is_terminal,
    submitted,
    terminal_count,
    text_of_last_attempt,
)

from lib.handlers import registry
from lib.models import VISION_KINDS
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

stack = e2e_suite.stack  # once on each profile
user = e2e_suite.user


KINDS = ["job_match", "resume_customize", "interview_prep"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_succeeds_with_deltas_and_a_valid_result(
    stack: Stack, user: User, kind: str
) -> None:
    body = submitted(user.submit(kind))
    job = body["job"]
    assert job["status"] == "queued" and job["tier"] == "paid"  # type: ignore[index]
    stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    types = [e.type for e in stream]
    assert types[0] == "status" and stream[0].data["status"] == "queued"
    assert "delta" in types and "progress" in types
    assert types[-2:] == ["result", "status"] and stream[-1].data["status"] == "succeeded"
    assert terminal_count(stream) == 1
    assert all(e.data["job_id"] == job["id"] and "ts" in e.data for e in stream)  # type: ignore[index]
    final = user.job(job["id"])  # type: ignore[index]
    assert final["status"] == "succeeded" and final["attempts"] == 1
    registry()[kind].result_model.model_validate(final["result"])
    assert stream[-2].data["result"] == final["result"]
    assert text_of_last_attempt(stream).strip().startswith("{")
    assert user.me()["coins"] == 5 - final["cost"]


def test_each_kind_beyond_the_first_three_runs_once_through_the_stack(
    stack: Stack, user: User
) -> None:
    inputs = {
        "resume_summary": {"resume_text": RESUME},
        "detailed_resume_summary": {"resume_text": RESUME},
        "job_summary": {"job_description": JD},
        "pre_match_audit": {"resume_text": RESUME, "job_description": JD},
    }
    # The kinds that read an image run in tests/test_images_e2e.py, pipelines in
    # tests/test_pipeline_e2e.py.
    pipelines = {kind for kind, handler in registry().items() if handler.pipeline is not None}
    assert set(inputs) | set(KINDS) | set(VISION_KINDS) | pipelines == set(registry())
    charged = 0
    with user.client() as client:
        for kind, job_input in inputs.items():
            body = submitted(client.post("/api/jobs", json={"kind": kind, "input": job_input}))
            stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
            assert stream[-1].data["status"] == "succeeded", (kind, stream[-1].data)
            final = user.job(body["job"]["id"])  # type: ignore[index]
            registry()[kind].result_model.model_validate(final["result"])
            assert stream[-2].data["result"] == final["result"]
            charged += final["cost"]
    assert charged == 5 and user.me()["coins"] == 0


def test_every_answer_says_how_long_the_handler_took_in_server_timing(
    stack: Stack, user: User
) -> None:
    import re

    with user.client() as client:
        answers = [user.submit("job_match"), client.get("/api/me")]
    answers.append(httpx.get(f"{stack.producer_url}/api/jobs/{uuid.uuid4()}", timeout=10))
    assert [a.status_code for a in answers] == [202, 200, 401]
    for answer in answers:
        timing = re.fullmatch(r"app;dur=(\d+\.\d\d)", answer.headers["Server-Timing"])
        assert timing and 0 < float(timing.group(1)) < 10_000


def test_a_reconnect_with_last_event_id_loses_nothing_and_repeats_nothing(
    stack: Stack, user: User
) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:slow=15]]"))
    url = body["events_url"]
    first = events(stack.producer_url, url, stop_after=4)  # type: ignore[arg-type]
    rest = follow_from(stack, url, first[-1].id)  # type: ignore[arg-type]
    whole = events(stack.producer_url, url)  # type: ignore[arg-type]
    assert [e.id for e in first + rest] == [e.id for e in whole]
    assert len({e.id for e in whole}) == len(whole)
    via_query = events(stack.producer_url, f"{url}&last_event_id={first[-1].id}")
    assert [e.id for e in via_query] == [e.id for e in rest]


def follow_from(stack: Stack, url: str, last_id: str) -> list:  # type: ignore[type-arg]
    out = events(stack.producer_url, url, last_event_id=last_id)
    while not is_terminal(out[-1]):
        out += events(stack.producer_url, url, last_event_id=out[-1].id)
    return out


def test_a_finished_jobs_stream_replays_from_the_first_event(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match"))
    live = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    replay = events(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert [e.id for e in replay] == [e.id for e in live]


def test_cancel_while_running_stops_the_job_and_refunds(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:slow=40]]"))
    job_id = body["job"]["id"]  # type: ignore[index]
    seen = events(stack.producer_url, body["events_url"], stop_after=3)  # type: ignore[arg-type]
    assert any(e.type == "status" and e.data["status"] == "running" for e in seen) or len(seen) == 3
    response = user.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 202 and response.json()["job"]["status"] == "cancelled"
    stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert stream[-1].data["status"] == "cancelled" and terminal_count(stream) == 1
    assert user.me()["coins"] == 5
    again = user.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"
    wait_for(lambda: user.me()["active_jobs"] == 0, 10, what="no active jobs")
    # The worker's attempt has ended (it stopped at its next write), and it changed nothing.
    wait_for(
        lambda: httpx.get(f"{stack.worker_url}/healthz").json()["running"] == 0,
        20,
        what="the cancelled attempt to stop",
    )
    assert user.job(job_id)["status"] == "cancelled"
    assert terminal_count(follow(stack.producer_url, body["events_url"])) == 1


def test_cancel_while_queued_refunds_and_the_delivery_is_acknowledged(
    stack: Stack, user: User
) -> None:
    worker = stack.component("worker")
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        body = submitted(user.submit("job_match"))
        job_id = body["job"]["id"]  # type: ignore[index]
        response = user.post(f"/api/jobs/{job_id}/cancel")
        assert response.status_code == 202
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert [e.data.get("status") for e in stream if e.type == "status"] == ["queued", "cancelled"]
    final = user.job(job_id)
    assert final["status"] == "cancelled" and final["attempts"] == 0
    assert user.me()["coins"] == 5


def test_a_job_survives_a_worker_sigkill_and_is_charged_once(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:slow=25]]"))
    job_id = body["job"]["id"]  # type: ignore[index]
    seen = events(stack.producer_url, body["events_url"], stop_after=4)  # type: ignore[arg-type]
    assert any(e.type == "delta" for e in seen)
    worker = stack.component("worker")
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    stack.restart("worker")
    stream = follow(stack.producer_url, body["events_url"], timeout=120)  # type: ignore[arg-type]
    final = user.job(job_id)
    assert final["status"] == "succeeded" and final["attempts"] >= 2
    assert terminal_count(stream) == 1
    attempts = [
        e.data["attempt"] for e in stream if e.type == "status" and e.data["status"] == "running"
    ]
    assert attempts == sorted(attempts) and attempts[-1] == final["attempts"]
    assert user.me()["coins"] == 4
    text_of_last_attempt(stream)  # the client view is well defined across attempts


def test_a_transient_llm_failure_succeeds_on_a_later_attempt(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:fail_once=503]]"))
    stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    final = user.job(body["job"]["id"])  # type: ignore[index]
    assert final["status"] == "succeeded" and final["attempts"] == 2
    statuses = [e.data["status"] for e in stream if e.type == "status"]
    assert statuses == ["queued", "running", "retrying", "running", "succeeded"]
    assert any(e.type == "error" and e.data["retryable"] for e in stream)
    assert user.me()["coins"] == 4


def test_a_persistent_llm_failure_fails_after_retries_and_refunds_once(
    stack: Stack, user: User
) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:fail=500]]"))
    stream = follow(stack.producer_url, body["events_url"], timeout=120)  # type: ignore[arg-type]
    final = user.job(body["job"]["id"])  # type: ignore[index]
    assert final["status"] == "failed" and final["attempts"] == 6
    assert final["error"]["code"] == "llm_unavailable"
    assert stream[-1].data["status"] == "failed" and terminal_count(stream) == 1
    assert user.me()["coins"] == 5


def test_invalid_model_output_unread_fails_after_one_repair_and_refunds(
    stack: Stack, user: User
) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:invalid_json]]"))
    job_id = body["job"]["id"]  # type: ignore[index]
    # Nobody watches while it runs, so its output is never written: nothing was delivered.
    wait_for(lambda: user.job(job_id)["status"] == "failed", 30, what="the job to fail")
    final = user.job(job_id)
    assert final["attempts"] == 2  # the repair attempt
    assert final["error"]["code"] == "invalid_model_output"
    assert final["result"] is None
    stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert stream[-1].data["status"] == "failed" and not any(e.type == "delta" for e in stream)
    assert user.me()["coins"] == 5


def test_health_and_readiness(stack: Stack, user: User) -> None:
    deep = httpx.get(f"{stack.producer_url}/api/health?deep=1").json()
    assert deep["ok"] and all(deep["checks"][c]["ok"] for c in ("redis", "db", "storage"))
    assert httpx.get(f"{stack.worker_url}/readyz").json()["ok"]
    # A labelled counter shows once a job has run (this test may run first).
    body = user.submit("job_match").json()
    assert follow(stack.producer_url, body["events_url"])[-1].data["status"] == "succeeded"  # type: ignore[arg-type]
    assert "cs_job_attempts_total" in httpx.get(f"{stack.worker_url}/metrics").text


def test_jobs_in_parallel_all_finish_once(stack: Stack) -> None:
    users = [User(stack.producer_url) for _ in range(6)]
    results: dict[str, str] = {}

    def run(u: User) -> None:
        body = submitted(u.submit("job_match"))
        stream = follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
        results[u.id] = stream[-1].data["status"]

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert sorted(results.values()) == ["succeeded"] * 6
    assert JD  # the shared job description was used


def test_a_sigterm_drains_the_worker_and_the_job_finishes_after_a_restart(
    stack: Stack, user: User
) -> None:
    body = submitted(user.submit("job_match", resume=RESUME + " [[llm:slow=40]]"))
    job_id = body["job"]["id"]  # type: ignore[index]
    seen = events(stack.producer_url, body["events_url"], stop_after=4)  # type: ignore[arg-type]
    assert any(e.type == "delta" for e in seen)
    worker = stack.component("worker")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)  # gunicorn's master: graceful stop
    assert worker.proc.wait(60) == 0
    stack.restart("worker")
    stream = follow(stack.producer_url, body["events_url"], timeout=120)  # type: ignore[arg-type]
    final = user.job(job_id)
    assert final["status"] == "succeeded" and final["attempts"] == 2
    drained = [e for e in stream if e.type == "error"]
    assert drained and drained[0].data["code"] == "worker_shutting_down"
    assert drained[0].data["retryable"] is True
    assert terminal_count(stream) == 1 and user.me()["coins"] == 4


def test_no_log_line_carries_a_token_a_key_or_resume_text(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match"))
    follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert_logs_clean(stack, body["job"]["id"])  # type: ignore[index]
