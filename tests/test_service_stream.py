"""The SSE generator of `lib.service.Producer.stream`: heartbeats, the time limit, resumption."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from helpers.net import wait_for

from lib.config import Settings
from lib.events import JobEvents, emit_terminal
from lib.service import Producer
from lib.state import State
from lib.state.tcp import TcpBackend


def make_producer(redis_url: str, redis_prefix: str, **settings: object) -> Producer:
    state = State(TcpBackend(redis_url), prefix=redis_prefix)
    return Producer(
        settings=Settings(**settings),  # type: ignore[arg-type]
        store=None,
        state=state,
        publisher=None,  # type: ignore[arg-type]
        verifier=None,
    )  # type: ignore[arg-type]


@pytest.fixture
def producer(redis_url: str, redis_prefix: str) -> Producer:
    return make_producer(redis_url, redis_prefix)


def blocked_reads(client: redis.Redis) -> int:
    """Clients that Redis holds blocked in XREAD (this test's reader, and any other test's)."""
    return sum(1 for c in client.client_list() if "b" in c["flags"] and c["cmd"] == "xread")


def test_a_quiet_stream_sends_heartbeats_and_ends_at_the_time_limit(producer: Producer) -> None:
    job = str(uuid.uuid4())
    JobEvents(producer.state, job, 1).running()
    started = time.monotonic()
    frames = list(producer.stream(job, None, max_seconds=1.0, heartbeat=0.25))
    elapsed = time.monotonic() - started
    assert frames[0] == "retry: 1000\n\n"
    assert frames[1].startswith("id: ") and "event: status" in frames[1]
    assert frames.count(": keep-alive\n\n") >= 2
    assert 0.9 <= elapsed < 3


def test_the_stream_ends_right_after_the_terminal_status(
    producer: Producer, redis_url: str
) -> None:
    job = str(uuid.uuid4())
    events = JobEvents(producer.state, job, 1, flush_ms=0)
    events.running()
    watcher = redis.Redis.from_url(redis_url, decode_responses=True)
    before = blocked_reads(watcher)

    def finish() -> None:
        # Once the reader has sent the first frame and blocks for the next one (XREAD BLOCK).
        try:
            wait_for(lambda: blocked_reads(watcher) > before, what="the reader to block")
        finally:
            watcher.close()
        events.delta("hello")
        emit_terminal(producer.state, job, "succeeded", result={"ok": 1}, error=None, attempt=1)

    threading.Thread(target=finish).start()
    started = time.monotonic()
    frames = [
        f for f in producer.stream(job, None, max_seconds=30, heartbeat=10) if f.startswith("id:")
    ]
    assert time.monotonic() - started < 5
    kinds = [f.split("\n")[1] for f in frames]
    assert kinds == ["event: status", "event: delta", "event: result", "event: status"]
    assert '"succeeded"' in frames[-1]


def test_resuming_after_an_id_repeats_nothing(producer: Producer) -> None:
    job = str(uuid.uuid4())
    events = JobEvents(producer.state, job, 1, flush_ms=0)
    events.running()
    events.delta("a")
    emit_terminal(producer.state, job, "succeeded", result={}, error=None, attempt=1)
    whole = [
        f for f in producer.stream(job, None, max_seconds=5, heartbeat=1) if f.startswith("id:")
    ]
    first_id = whole[0].split("\n")[0][4:]
    rest = [
        f for f in producer.stream(job, first_id, max_seconds=5, heartbeat=1) if f.startswith("id:")
    ]
    assert rest == whole[1:]


def test_a_reader_marks_the_job_as_watched_by_its_transport_while_it_reads(
    producer: Producer,
) -> None:
    job = str(uuid.uuid4())
    JobEvents(producer.state, job, 1).running()
    assert producer.state.backend.command("GET", producer.state.keys.watch(job)) is None
    frames = producer.stream(job, None, max_seconds=5, heartbeat=1)
    assert next(frames) == "retry: 1000\n\n"
    assert next(frames).startswith("id: ")
    key = producer.state.keys.watch(job)
    assert producer.state.backend.command("GET", key) == "tcp"
    assert 0 < int(producer.state.backend.command("PTTL", key)) <= 45_000
    frames.close()


def test_the_polling_baseline_delivers_every_event_and_ends_after_the_terminal_status(
    redis_url: str, redis_prefix: str
) -> None:
    producer = make_producer(redis_url, redis_prefix, sse_read_mode="poll")
    job = str(uuid.uuid4())
    events = JobEvents(producer.state, job, 1, flush_ms=0)
    events.running()
    events.delta("a")
    frames = producer.stream(job, None, max_seconds=30, heartbeat=10)
    received = [next(frames), next(frames), next(frames)]  # retry, running, "a"
    assert '"text":"a"' in received[2]
    events.delta("b")
    emit_terminal(producer.state, job, "succeeded", result={}, error=None, attempt=1)
    rest = [f for f in frames if f.startswith("id:")]
    assert [f.split("\n")[1] for f in rest] == ["event: delta", "event: result", "event: status"]
    # The baseline never marks the job as watched: the original design had no such key.
    assert producer.state.backend.command("GET", producer.state.keys.watch(job)) is None
