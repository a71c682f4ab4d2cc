"""End to end: the stack started the way `make dev` starts it, driven over HTTP only: bad requests,
a broker outage, listing, health, parallel jobs, a drained worker, and what the logs carry.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from helpers.stack import (
    JD,
    RESUME,
    User,
    events,
    follow,
    submitted,
    terminal_count,
)

from scripts.devstack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(e2e_stack: Stack) -> Stack:
    """The suite below runs once on each profile (conftest.py `e2e_stack`)."""
    return e2e_stack


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "nope", "input": {"resume_text": "r", "job_description": "d"}}, "kind"),
        ({"kind": "job_match", "input": {"job_description": "d"}}, "input.resume_text"),
        (
            {"kind": "job_match", "input": {"resume_text": "r" * 20_001, "job_description": "d"}},
            "input.resume_text",
        ),
        (
            {"kind": "job_match", "input": {"resume_text": "r", "job_description": "d" * 10_001}},
            "input.job_description",
        ),
        (
            {
                "kind": "job_match",
                "input": {"resume_text": "r", "job_description": "d"},
                "tier": "gold",
            },
            "tier",
        ),
        (
            {
                "kind": "job_match",
                "input": {"resume_text": "r", "job_description": "d", "extra": 1},
            },
            "input.extra",
        ),
        ([1, 2], "body"),
    ],
)
def test_invalid_input_gets_400_with_field_details_and_charges_nothing(
    user: User, body: object, field: str
) -> None:
    with user.client() as client:
        response = client.post("/api/jobs", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and field in error["details"]
    assert user.me()["coins"] == 5 and user.get("/api/jobs").json()["jobs"] == []


def test_malformed_requests_get_the_spec_error_shape(stack: Stack, user: User) -> None:
    with user.client() as client:
        too_big = client.post(
            "/api/jobs",
            content=b"{" + b" " * 300_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        wrong_type = client.post(
            "/api/jobs",
            content=b"kind=job_match",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        bad_json = client.post(
            "/api/jobs", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        long_key = client.post(
            "/api/jobs",
            json={"kind": "job_match", "input": {}},
            headers={"Idempotency-Key": "k" * 129},
        )
    with httpx.Client(base_url=stack.producer_url) as anonymous:
        no_auth = anonymous.get("/api/me")
        bad_auth = anonymous.get("/api/me", headers={"Authorization": "Bearer not-a-jwt"})
    for response, status, code in [
        (too_big, 413, "payload_too_large"),
        (wrong_type, 415, "unsupported_media_type"),
        (bad_json, 400, "invalid_input"),
        (long_key, 400, "invalid_input"),
        (no_auth, 401, "unauthorized"),
        (bad_auth, 401, "unauthorized"),
    ]:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"code", "message", "details"}
        assert response.json()["error"]["code"] == code
    assert user.me()["coins"] == 5


def test_the_broker_down_at_submit_answers_503_and_charges_nothing(
    stack: Stack, user: User
) -> None:
    broker = stack.component("broker")
    assert broker.proc is not None
    os.killpg(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait(10)
    try:
        started = time.monotonic()
        response = user.submit("job_match")
        assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
        assert time.monotonic() - started < 10
        assert user.me()["coins"] == 5
        jobs = user.get("/api/jobs").json()["jobs"]
        assert all(j["status"] != "queued" for j in jobs)
    finally:
        stack.restart("broker")
    assert user.submit("job_match").status_code == 202


def test_listing_pages_newest_first(user: User) -> None:
    ids = [user.submit("job_match").json()["job"]["id"] for _ in range(3)]
    page = user.get("/api/jobs?limit=2").json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    rest = user.get(f"/api/jobs?limit=2&before={page['next_before']}").json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]]
    assert user.get("/api/jobs?limit=0").status_code == 400


def test_health_and_readiness(stack: Stack) -> None:
    deep = httpx.get(f"{stack.producer_url}/api/health?deep=1").json()
    assert deep["ok"] and deep["checks"]["redis"]["ok"] and deep["checks"]["db"]["ok"]
    assert httpx.get(f"{stack.worker_url}/readyz").json()["ok"]
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
    assert stack.log_dir is not None
    text = "\n".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
    assert body["job"]["id"] in text  # type: ignore[index]  # the logs are there and about jobs
    for secret in ("eyJ", "sig_", "Bearer ", RESUME[:40], "settlement service", JD[:30]):
        assert secret not in text, f"{secret!r} found in the logs"
