"""End to end over HTTP: one stream for all of a user's jobs (`GET /api/events`), and a cancel
that stops spending (the request to the model closes at once, the partial output is kept)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers.net import wait_for
from helpers.stack import RESUME, Event, User, events, is_terminal
from httpx_sse import connect_sse

from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

SLOW = " [[llm:slow=25]]"  # a few seconds per job: the jobs overlap while streamed


@pytest.fixture(scope="module", params=["local", "cloud"])
def stack(request: pytest.FixtureRequest, local_stack: Callable[..., object]) -> Iterator[Stack]:
    # The default lease heartbeat (every LEASE_TTL_SECONDS / 3 = 20 s) is far slower than the
    # one second a cancel may take to reach the model: only the cancel announcement makes it.
    with local_stack(  # type: ignore[attr-defined]
        "userstream",
        profile=request.param,
        INITIAL_COINS="50",
        USER_MAX_ACTIVE_PAID="5",
        SSE_MAX_STREAMS_PER_USER="2",
        OFFLINE_LLM_TOKENS_PER_SECOND="200",
    ) as running:
        yield running


def user_stream(
    base: str,
    url: str,
    until: Callable[[list[Event]], bool],
    *,
    last_event_id: str | None = None,
    on_event: Callable[[list[Event]], None] = lambda seen: None,
    timeout: float = 90.0,
) -> list[Event]:
    """Read the user stream until `until(events so far)` holds, then disconnect."""
    out: list[Event] = []
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with (
        httpx.Client(base_url=base, timeout=httpx.Timeout(timeout)) as client,
        connect_sse(client, "GET", url, headers=headers) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if not sse.data:
                continue
            out.append(Event(sse.id, sse.event, json.loads(sse.data)))
            on_event(out)
            if until(out):
                break
    return out


def finished(jobs: list[str]) -> Callable[[list[Event]], bool]:
    return lambda seen: {e.data["job_id"] for e in seen if is_terminal(e)} >= set(jobs)


def submit(user: User, text: str = RESUME) -> dict[str, object]:
    response = user.submit("job_match", resume=text)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def test_three_jobs_and_one_submitted_meanwhile_stream_in_one_across_a_reconnect(
    stack: Stack,
) -> None:
    alice, bob = User(stack.producer_url), User(stack.producer_url)
    bodies = [submit(alice, RESUME + SLOW) for _ in range(3)]
    jobs = [b["job"]["id"] for b in bodies]  # type: ignore[index]
    theirs = submit(bob, RESUME + SLOW)
    bobs_job = theirs["job"]["id"]  # type: ignore[index]
    bobs: list[Event] = []
    bob_reads = threading.Thread(  # Bob watches his stream while Alice's jobs run beside his
        target=lambda: bobs.extend(
            user_stream(stack.producer_url, bob.me()["events_url"], finished([bobs_job]))
        )
    )
    bob_reads.start()
    url = alice.me()["events_url"]
    assert bodies[0]["user_events_url"].startswith("/api/events?token=")  # type: ignore[union-attr]
    first = user_stream(stack.producer_url, url, lambda seen: any(e.type == "delta" for e in seen))
    later: list[str] = []

    def submit_once(seen: list[Event]) -> None:
        if not later:  # a job submitted while the stream is open
            later.append(submit(alice)["job"]["id"])  # type: ignore[index]

    second = user_stream(  # the forced reconnect: resume every job after the last event seen
        stack.producer_url,
        url,
        lambda seen: later != [] and finished(jobs + later)(seen),
        last_event_id=first[-1].id,
        on_event=submit_once,
    )
    got = first + second
    auth = {"Authorization": f"Bearer {alice.token}"}
    for job_id in jobs + later:
        own = events(stack.producer_url, f"/api/jobs/{job_id}/events", headers=auth)
        mine = [(e.type, e.data) for e in got if e.data["job_id"] == job_id]
        # Nothing lost, nothing repeated: exactly the job's own stream, to its end.
        assert mine == [(e.type, e.data) for e in own]
        assert mine[-1][1]["status"] == "succeeded"
    assert bobs_job not in {e.data["job_id"] for e in got}
    bob_reads.join(60)
    assert {e.data["job_id"] for e in bobs} == {bobs_job} and is_terminal(bobs[-1])


def test_the_user_stream_counts_against_the_stream_limit_with_the_job_streams(
    stack: Stack,
) -> None:
    user = User(stack.producer_url)
    body = submit(user, RESUME + " [[llm:slow=60]]")
    with (
        httpx.Client(base_url=stack.producer_url, timeout=30) as client,
        client.stream("GET", user.me()["events_url"]) as one,
        client.stream("GET", body["events_url"]) as two,  # type: ignore[arg-type]
    ):
        assert (one.status_code, two.status_code) == (200, 200)
        for url in (user.me()["events_url"], body["events_url"]):
            refused = client.get(url)  # type: ignore[arg-type]
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "stream_limit"
    assert user.post(f"/api/jobs/{body['job']['id']}/cancel").status_code == 202  # type: ignore[index]


def llm_streams(stack: Stack, since: float, outcome: str) -> list[dict[str, Any]]:
    """The offline LLM's streamed answers begun after `since` that are now `outcome`."""
    streams = httpx.get(f"http://127.0.0.1:{stack.ports.llm}/_offline/streams").json()["streams"]
    return [s for s in streams if s["started_at"] >= since and s["outcome"] == outcome]


def test_a_cancel_closes_the_request_to_the_model_within_a_second(stack: Stack) -> None:
    user = User(stack.producer_url)
    began = time.time()
    # Nobody watches this job, so its worker writes nothing until the end: without the cancel
    # announcement it would learn of the cancel only at its next lease heartbeat (20 s).
    job_id = submit(user, RESUME + " [[llm:slow=50]]")["job"]["id"]  # type: ignore[index]
    wait_for(lambda: llm_streams(stack, began, "streaming"), 20, what="the model's answer")
    cancelled_at = time.time()
    assert user.post(f"/api/jobs/{job_id}/cancel").status_code == 202
    closed = wait_for(
        lambda: llm_streams(stack, began, "client_closed"), 10, what="the client to go away"
    )
    assert closed[0]["ended_at"] - cancelled_at <= 1.0
    assert user.job(job_id)["status"] == "cancelled"


def test_a_cancelled_job_keeps_the_output_delivered_before_the_cancel(stack: Stack) -> None:
    user = User(stack.producer_url)
    body = submit(user, RESUME + " [[llm:slow=50]]")
    job_id = body["job"]["id"]  # type: ignore[index]
    seen = user_stream(
        stack.producer_url,
        body["events_url"],  # type: ignore[arg-type]
        lambda seen: any(e.type == "delta" for e in seen),
    )
    shown = "".join(str(e.data["text"]) for e in seen if e.type == "delta")
    assert user.post(f"/api/jobs/{job_id}/cancel").status_code == 202
    wait_for(lambda: user.job(job_id)["result"], timeout=10, what="the partial output")
    job = user.job(job_id)
    assert job["status"] == "cancelled"
    assert job["result"]["partial"].startswith(shown) and shown


def test_viewers_who_leave_stop_the_jobs_streaming_at_once(stack: Stack) -> None:
    """The job's stream and the user's stream both watch one job, then both leave: the last one
    out says so, and the worker holds the rest of the output and writes it with the result,
    instead of flushing for the up to 45 s the watch key would have lasted."""
    user = User(stack.producer_url)
    body = submit(user, RESUME + " [[llm:slow=20]] [[llm:tokens=300]]")  # about 6 s
    job_id = body["job"]["id"]  # type: ignore[index]

    def three_deltas(seen: list[Event]) -> bool:
        return sum(e.type == "delta" for e in seen) >= 3

    views: list[list[Event]] = []
    other = threading.Thread(
        target=lambda: views.append(
            user_stream(stack.producer_url, user.me()["events_url"], three_deltas)
        )
    )
    other.start()
    views.append(user_stream(stack.producer_url, body["events_url"], three_deltas))  # type: ignore[arg-type]
    other.join(60)
    left = time.time()
    assert [view[-1].data["job_id"] for view in views] == [job_id, job_id]
    wait_for(lambda: user.job(job_id)["status"] == "succeeded", 60, what="the job to end")

    auth = {"Authorization": f"Bearer {user.token}"}
    written = events(stack.producer_url, body["events_url"], headers=auth)  # type: ignore[arg-type]
    deltas = [e for e in written if e.type == "delta"]
    result = next(e for e in written if e.type == "result")
    late = [e for e in deltas if left + 1.0 < e.data["ts"] < result.data["ts"] - 0.05]
    assert late == [], f"{len(late)} flushes more than 1 s after the viewers left"
    assert deltas[-1].data["ts"] >= result.data["ts"] - 0.05  # the rest, with the result
    assert result.data["ts"] - left > 2.0  # the job ran on long after its viewers left
