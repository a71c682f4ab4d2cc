"""End to end on both stack profiles: the rewritten routes, and what makes `cloud` the production
path (the producer on the stand-ins, the worker under the session pooler's cap)."""

from __future__ import annotations

import math
import os
import signal

import httpx
import psycopg
import pytest
from helpers.net import wait_for
from helpers.stack import User, events, follow

from scripts.stack.cloud_profile import ROLE, SESSION_POOLER_CLIENTS
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e


def test_each_job_route_also_answers_its_rewritten_form(e2e_stack: Stack) -> None:
    user = User(e2e_stack.producer_url)
    body = user.submit("job_match").json()
    job_id = body["job"]["id"]
    stream = events(e2e_stack.producer_url, f"/api/events?id={job_id}&token={body['stream_token']}")
    assert stream[-1].data["status"] == "succeeded"
    assert [e.id for e in stream] == [
        e.id for e in follow(e2e_stack.producer_url, body["events_url"])
    ]
    assert user.get(f"/api/jobs?id={job_id}").json()["job"] == user.job(job_id)
    done = user.post(f"/api/jobs?action=cancel&id={job_id}")
    assert done.status_code == 409 and done.json()["error"]["code"] == "already_finished"
    # POST /api/jobs/<id> has no route; rewritten it must not become a submit either.
    refused = [user.post(f"/api/jobs/{job_id}"), user.post(f"/api/jobs?id={job_id}")]
    assert [r.status_code for r in refused] == [405, 405]
    allowed = [set(r.headers["Allow"].split(", ")) for r in refused]
    assert allowed == [{"GET", "HEAD", "OPTIONS"}] * 2
    # Without `id`, /api/events is the caller's user stream (tests/test_userstream_e2e.py).
    assert httpx.get(f"{e2e_stack.producer_url}/api/events").status_code == 401
    assert [j["id"] for j in user.get("/api/jobs").json()["jobs"]] == [job_id]
    assert httpx.get(f"{e2e_stack.producer_url}/api/openapi").json()["openapi"].startswith("3.")


@pytest.mark.parametrize("e2e_stack", ["cloud"], indirect=True)
@pytest.mark.parametrize("standin", ["upstash", "postgrest", "storage"])
def test_the_cloud_producer_reaches_redis_the_database_and_storage_only_through_the_stand_ins(
    e2e_stack: Stack, standin: str
) -> None:
    check = {"upstash": "redis", "postgrest": "db", "storage": "storage"}[standin]
    health = f"{e2e_stack.producer_url}/api/health?deep=1"
    component = e2e_stack.component(standin)
    assert component.proc is not None
    os.killpg(component.proc.pid, signal.SIGKILL)
    component.proc.wait(10)
    try:
        down = httpx.get(health, timeout=30)
        assert down.status_code == 503 and down.json()["checks"][check]["ok"] is False
        others = {"redis", "db", "storage"} - {check}
        assert all(down.json()["checks"][other]["ok"] for other in others)
        # The worker runs as on the VPS, on TCP Redis and psycopg: the stand-ins are not its path.
        assert httpx.get(f"{e2e_stack.worker_url}/readyz", timeout=10).status_code == 200
    finally:
        e2e_stack.restart(standin)
    assert httpx.get(health, timeout=30).status_code == 200


@pytest.mark.parametrize("e2e_stack", ["cloud"], indirect=True)
def test_the_cloud_worker_logs_in_as_a_role_capped_like_the_session_pooler(
    e2e_stack: Stack, database_url: str
) -> None:
    user = User(e2e_stack.producer_url)
    body = user.submit("job_match").json()
    assert follow(e2e_stack.producer_url, body["events_url"])[-1].data["status"] == "succeeded"

    def role_connections() -> int:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where usename = %s", [ROLE]
            ).fetchone()
        return int(row[0]) if row else 0

    assert 0 < role_connections() <= SESSION_POOLER_CLIENTS
    # Postgres refuses the role's client beyond the cap, as the pooler does.
    worker_url = e2e_stack.component("worker").env["DATABASE_URL"]
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            for _ in range(SESSION_POOLER_CLIENTS + 1):
                held.append(psycopg.connect(worker_url))
        assert role_connections() == SESSION_POOLER_CLIENTS
    finally:
        for conn in held:
            conn.close()
    again = user.submit("job_match").json()
    assert follow(e2e_stack.producer_url, again["events_url"])[-1].data["status"] == "succeeded"


def _refusal(response: httpx.Response, code: str) -> dict[str, object]:
    """A 429 whose Retry-After is its details' next_slot_s: a positive whole number."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == code
    details: dict[str, object] = error["details"]
    assert response.headers["Retry-After"].isdigit()
    assert int(response.headers["Retry-After"]) == details["next_slot_s"]
    assert isinstance(details["next_slot_s"], int) and details["next_slot_s"] >= 1
    assert isinstance(details["reason"], str) and details["reason"]
    return details


def test_a_refused_submit_says_why_and_when_the_next_slot_is_expected(e2e_stack: Stack) -> None:
    base = e2e_stack.producer_url
    warm = User(base)  # its job that succeeded is a service-time sample of the free tier
    done = warm.submit("job_match", tier="free").json()["job"]["id"]
    wait_for(lambda: warm.job(done)["status"] == "succeeded", 60, what="a free job to succeed")
    slow = "Resume. [[llm:slow=100]]"
    alice, bob, carol = User(base), User(base), User(base)
    first = alice.submit("job_match", resume=slow, tier="free").json()["job"]["id"]
    wait_for(lambda: alice.job(first)["status"] == "running", 30, what="alice's job to run")
    again = _refusal(alice.submit("job_match", resume=slow, tier="free"), "user_concurrency")
    assert (again["active"], again["limit"]) == (1, 1)
    # The free tier's mean service time is measured: the next slot is expected within it.
    service = again["service_s"]
    assert isinstance(service, float) and service > 0
    assert again["next_slot_s"] <= max(1, math.ceil(service + 0.05))  # type: ignore[operator]
    other = bob.submit("job_match", resume=slow, tier="free")
    assert other.status_code == 202, other.text
    full = _refusal(carol.submit("job_match", resume=slow, tier="free"), "backpressure")
    assert (full["active"], full["limit"]) == (2, 2)
    assert carol.me()["free_jobs_left_today"] == 2  # refused: nothing charged
    for user, job_id in ((alice, first), (bob, other.json()["job"]["id"])):
        assert user.post(f"/api/jobs/{job_id}/cancel").status_code == 202
