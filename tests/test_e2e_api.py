"""End to end, the producer's API rules over HTTP only, on the stack started the way `make dev`
starts it: quota, per-user concurrency and backpressure, idempotency, another user's job,
invalid input and malformed requests, listing, and the broker down at submit.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from fixtures import e2e_suite
from helpers.stack import (
    RESUME,
    User,
    assert_logs_clean,
    follow,
    submitted,
)

from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

stack = e2e_suite.stack  # once on each profile
user = e2e_suite.user


def test_quota_exhausted_when_coins_and_free_jobs_run_out(stack: Stack, user: User) -> None:
    # Slow enough to be still running after the two free jobs, even on a loaded machine.
    slow = RESUME + " [[llm:slow=200]]"
    ids = [
        submitted(user.submit(k, resume=slow))["job"]["id"]  # type: ignore[index]
        for k in ("interview_prep", "resume_customize", "job_match")
    ]
    assert user.me()["coins"] == 0
    for _ in range(2):  # the free daily allowance, one at a time (one active free job per user)
        free = submitted(user.submit("job_match"))
        assert free["job"]["tier"] == "free"  # type: ignore[index]
        assert follow(stack.producer_url, free["events_url"])[-1].data["status"] == "succeeded"  # type: ignore[arg-type]
    assert user.me()["free_jobs_left_today"] == 0
    refused = user.submit("job_match")
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "quota_exhausted"
    paid = user.submit("job_match", tier="paid")
    assert paid.status_code == 402
    for job_id in ids:
        assert user.post(f"/api/jobs/{job_id}/cancel").status_code == 202
    assert user.me()["coins"] == 5


def test_user_concurrency_and_backpressure_answer_429_with_retry_after(stack: Stack) -> None:
    slow = RESUME + " [[llm:slow=30]]"
    alice = User(stack.producer_url)
    first = submitted(alice.submit("job_match", resume=slow, tier="free"))
    second = alice.submit("job_match", resume=slow, tier="free")
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "user_concurrency"
    assert int(second.headers["Retry-After"]) >= 1
    bob, carol = User(stack.producer_url), User(stack.producer_url)
    other = submitted(bob.submit("job_match", resume=slow, tier="free"))
    full = carol.submit("job_match", resume=slow, tier="free")
    assert full.status_code == 429 and full.json()["error"]["code"] == "backpressure"
    assert int(full.headers["Retry-After"]) >= 1
    assert carol.me()["coins"] == 5 and carol.me()["free_jobs_left_today"] == 2
    alice.post(f"/api/jobs/{first['job']['id']}/cancel")  # type: ignore[index]
    bob.post(f"/api/jobs/{other['job']['id']}/cancel")  # type: ignore[index]
    assert alice.me()["free_jobs_left_today"] == 2  # the cancelled free job is given back


def test_the_idempotency_key_returns_the_same_job_without_a_second_charge(user: User) -> None:
    first = user.submit("job_match", key="key-1")
    again = user.submit("job_match", key="key-1")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    conflict = user.submit("interview_prep", key="key-1")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert user.me()["coins"] == 4


def test_another_user_gets_404_on_every_endpoint_naming_the_job(stack: Stack, user: User) -> None:
    body = submitted(user.submit("job_match"))
    job_id = body["job"]["id"]  # type: ignore[index]
    mallory = User(stack.producer_url)
    assert mallory.get(f"/api/jobs/{job_id}").status_code == 404
    assert mallory.post(f"/api/jobs/{job_id}/cancel").status_code == 404
    with mallory.client() as client:
        streamed = client.get(f"/api/jobs/{job_id}/events")
    assert streamed.status_code == 404
    assert streamed.json()["error"]["code"] == "not_found"
    assert job_id not in [j["id"] for j in mallory.get("/api/jobs").json()["jobs"]]
    other = submitted(mallory.submit("job_match"))
    with httpx.Client(base_url=stack.producer_url) as client:
        wrong = client.get(f"/api/jobs/{job_id}/events?token={other['stream_token']}")
    assert wrong.status_code == 401
    follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    follow(stack.producer_url, other["events_url"])  # type: ignore[arg-type]


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


def test_no_log_line_of_a_refusal_carries_a_token_a_key_or_resume_text(
    stack: Stack, user: User
) -> None:
    """Last in this module: its stack's logs hold every refusal above (quota, 429s, invalid and
    malformed input, another user's 404s, the broker down at submit)."""
    body = submitted(user.submit("job_match"))
    follow(stack.producer_url, body["events_url"])  # type: ignore[arg-type]
    assert_logs_clean(stack, body["job"]["id"])  # type: ignore[index]
