"""Isolation beyond test_e2e_api's 404s: another user's job is indistinguishable from no job at all.

For every endpoint that names a job, user B gets byte-for-byte the answer for a job id that
does not exist when the job is user A's; B's attempts change nothing of A's; job ids are random
UUID4s; an Idempotency-Key or a list cursor never crosses from one user to another.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from helpers.net import wait_for
from helpers.stack import RESUME, User, follow

from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

SLOW = RESUME + " [[llm:slow=20]]"


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack(
        "iso",
        OFFLINE_LLM_TOKENS_PER_SECOND="2000",
    ) as running:
        yield running


def submitted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def answer(response: httpx.Response) -> tuple[int, str, Any]:
    """What a caller can observe of an answer (bar the Date header)."""
    return response.status_code, response.headers.get("content-type", ""), response.json()


def probes(user: User, job_id: str, stream_token: str) -> dict[str, httpx.Response]:
    """Every way of naming a job: as `user` (bearer), and with `user`'s stream token for
    another job of theirs."""
    events = f"/api/jobs/{job_id}/events"
    with user.client() as client, httpx.Client(base_url=user.base, timeout=30) as anonymous:
        return {
            "get": client.get(f"/api/jobs/{job_id}"),
            "get (upper case id)": client.get(f"/api/jobs/{job_id.upper()}"),
            "cancel": client.post(f"/api/jobs/{job_id}/cancel"),
            "events with bearer": client.get(events),
            "events with bearer, resuming": client.get(events, headers={"Last-Event-ID": "0-1"}),
            "events with another job's stream token": anonymous.get(
                events, params={"token": stream_token}
            ),
            "list before it": client.get("/api/jobs", params={"before": job_id}),
        }


def test_another_users_job_answers_exactly_like_a_job_that_does_not_exist(stack: Stack) -> None:
    alice, mallory = User(stack.producer_url), User(stack.producer_url)
    running = submitted(alice.submit("job_match", resume=SLOW))
    finished = submitted(alice.submit("job_match"))
    assert follow(stack.producer_url, finished["events_url"])[-1].data["status"] == "succeeded"
    own = submitted(mallory.submit("job_match"))
    nowhere = probes(mallory, str(uuid.uuid4()), own["stream_token"])
    for target in (running, finished):
        seen = probes(mallory, target["job"]["id"], own["stream_token"])
        for name, response in seen.items():
            assert answer(response) == answer(nowhere[name]), name
    assert alice.job(running["job"]["id"])["status"] in ("queued", "running")  # not cancelled
    assert nowhere["get"].status_code == 404
    assert nowhere["cancel"].json()["error"]["code"] == "not_found"
    assert nowhere["events with bearer"].status_code == 404
    assert nowhere["events with another job's stream token"].status_code == 401
    assert nowhere["list before it"].json() == {"jobs": [], "next_before": None}
    # Nothing of Alice's moved: her running job still finishes and is charged once.
    stream = follow(stack.producer_url, running["events_url"])
    assert stream[-1].data["status"] == "succeeded"
    assert alice.job(running["job"]["id"])["status"] == "succeeded"
    assert alice.me()["coins"] == 5 - 2 * running["job"]["cost"]
    follow(stack.producer_url, own["events_url"])


def test_a_stream_token_opens_only_its_own_jobs_stream(stack: Stack) -> None:
    alice, mallory = User(stack.producer_url), User(stack.producer_url)
    theirs = submitted(alice.submit("job_match"))
    mine = submitted(mallory.submit("job_match"))
    with httpx.Client(base_url=stack.producer_url, timeout=30) as anonymous:
        crossed = anonymous.get(
            f"/api/jobs/{theirs['job']['id']}/events", params={"token": mine["stream_token"]}
        )
        forged = anonymous.get(
            f"/api/jobs/{theirs['job']['id']}/events",
            params={"token": mine["stream_token"][:-2] + "xx"},
        )
    assert crossed.status_code == 401 and crossed.json()["error"]["code"] == "unauthorized"
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "unauthorized"
    # The real token still works, and the stream is Alice's job's only.
    stream = follow(stack.producer_url, theirs["events_url"])
    assert {e.data["job_id"] for e in stream} == {theirs["job"]["id"]}
    follow(stack.producer_url, mine["events_url"])


def test_an_idempotency_key_never_returns_another_users_job(stack: Stack) -> None:
    alice, mallory = User(stack.producer_url), User(stack.producer_url)
    key = f"shared-{uuid.uuid4().hex}"
    first = submitted(alice.submit("job_match", key=key))
    other = submitted(mallory.submit("job_match", key=key))
    assert other["job"]["id"] != first["job"]["id"]
    conflicting = mallory.submit("interview_prep", key=key)  # her own key's conflict, not Alice's
    assert conflicting.status_code == 409
    assert alice.submit("job_match", key=key).json()["job"]["id"] == first["job"]["id"]
    for body in (first, other):
        follow(stack.producer_url, body["events_url"])


def test_job_ids_are_random_uuid4s_and_listing_shows_only_the_callers_jobs(stack: Stack) -> None:
    users = [User(stack.producer_url) for _ in range(3)]
    bodies = {u.id: [submitted(u.submit("job_match")) for _ in range(2)] for u in users}
    ids = [b["job"]["id"] for per_user in bodies.values() for b in per_user]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(p.version == 4 and p.variant == uuid.RFC_4122 for p in parsed), ids
    assert len(set(ids)) == len(ids)
    # Random, not sequential: no two consecutive ids share a 32-bit prefix.
    assert len({i[:8] for i in ids}) == len(ids)
    for user in users:
        listed = {j["id"] for j in user.get("/api/jobs?limit=100").json()["jobs"]}
        assert listed == {b["job"]["id"] for b in bodies[user.id]}
    for per_user in bodies.values():
        for body in per_user:
            follow(stack.producer_url, body["events_url"])
    wait_for(lambda: all(u.me()["active_jobs"] == 0 for u in users), 30, what="jobs drained")
