"""`Producer.stream` on the Upstash REST adapter, as the producer runs on Vercel.

Upstash REST serves no blocking read, so the reader waits by subscription (`/subscribe`, through
the stand-in in front of the real Redis) and the writer, the worker on TCP Redis with
EVENTS_PUBLISH=auto, publishes only while such a reader watches. Here the two meet.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from helpers.net import UPSTASH_TOKEN, wait_for

from lib.config import Settings
from lib.events import JobEvents, emit_terminal
from lib.service import Producer
from lib.state import State
from lib.state.rest import RestBackend
from lib.state.tcp import TcpBackend

HEARTBEAT = 10.0  # a reader woken only by its heartbeat would take this long per event


@pytest.fixture
def rest_producer(upstash_url: str, redis_prefix: str) -> Iterator[Producer]:
    settings = Settings(events_publish="auto")
    state = State(RestBackend(upstash_url, UPSTASH_TOKEN), prefix=redis_prefix, publish="auto")
    yield Producer(
        settings=settings,
        store=None,  # type: ignore[arg-type]
        state=state,
        publisher=None,  # type: ignore[arg-type]
        verifier=None,  # type: ignore[arg-type]
    )
    state.backend.close()  # type: ignore[attr-defined]


@pytest.fixture
def worker_state(redis_url: str, redis_prefix: str) -> Iterator[State]:
    state = State(TcpBackend(redis_url), prefix=redis_prefix, publish="auto")
    yield state
    state.backend.close()  # type: ignore[attr-defined]


def test_a_rest_reader_waiting_by_subscription_gets_live_events_and_the_terminal_one(
    rest_producer: Producer, worker_state: State, redis_url: str
) -> None:
    job = str(uuid.uuid4())
    watch_key = worker_state.keys.watch(job)
    # What the worker's lease heartbeat reports: the transport of the reader watching the job.
    events = JobEvents(
        worker_state,
        job,
        1,
        flush_ms=0,
        viewer=lambda: worker_state.backend.command("GET", watch_key),
    )
    events.running()  # held: no one watches yet
    arrived: list[tuple[float, str]] = []

    def read() -> None:
        for frame in rest_producer.stream(job, None, max_seconds=60, heartbeat=HEARTBEAT):
            if frame.startswith("id: "):
                arrived.append((time.monotonic(), frame.split("\n")[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    watcher = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_for(
            lambda: worker_state.backend.command("GET", watch_key) == "rest",
            what="the reader to mark the job as watched over REST",
        )
        channel = worker_state.keys.notify(job)
        wait_for(
            lambda: watcher.pubsub_numsub(channel)[0][1] > 0,
            what="the reader to subscribe to the job's channel",
        )
        sent = time.monotonic()
        events.delta("hello")  # flushes the held `running` with it, published for the reader
        wait_for(lambda: len(arrived) >= 2, timeout=HEARTBEAT / 2, what="the delta, live")
        emit_terminal(worker_state, job, "succeeded", result={"ok": 1}, error=None, attempt=1)
        reader.join(HEARTBEAT / 2)
        assert not reader.is_alive(), "the stream did not end after the terminal status"
    finally:
        watcher.close()
        if reader.is_alive():  # a failed wait: end the reader before its backend closes
            emit_terminal(worker_state, job, "failed", result=None, error=None, attempt=1)
            reader.join(HEARTBEAT * 2)
    assert [kind for _, kind in arrived] == [
        "event: status",
        "event: delta",
        "event: result",
        "event: status",
    ]
    assert all(at - sent < HEARTBEAT / 2 for at, _ in arrived)
