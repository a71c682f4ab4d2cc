"""A job's viewers (lib/state/viewers.py), on both Redis adapters: counted in by each stream that
opens, out by each that ends before the job; the last one out ends the watch at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from helpers.net import wait_for

from lib.state import Signal, State


@pytest.fixture
def state(redis_backend: object, redis_prefix: str) -> State:
    return State(redis_backend, prefix=redis_prefix)  # type: ignore[arg-type]


@pytest.fixture
def heard(state: State) -> Iterator[list[Signal]]:
    """What the watch channel says, as a worker hears it, from once the listener is subscribed."""
    signals: list[Signal] = []
    stop = threading.Event()
    listener = threading.Thread(target=lambda: signals.extend(state.watchers(stop)))
    listener.start()
    probe = f"probe-{uuid.uuid4()}"

    def subscribed() -> bool:
        # A PUBLISH before the listener has subscribed is lost: announce until one is heard.
        state.announce_closed(probe, "cancelled")
        try:
            wait_for(lambda: any(s.job_id == probe for s in signals), timeout=0.5)
        except AssertionError:
            return False
        return True

    wait_for(subscribed, timeout=10, what="the listener to subscribe")
    signals.clear()
    try:
        yield signals
    finally:
        stop.set()
        state.announce_closed(probe, "cancelled")  # REST checks `stop` at its next line
        listener.join(20)  # TCP checks it every second
    assert not listener.is_alive()


def everything_heard(state: State, heard: list[Signal]) -> list[Signal]:
    """What the listener heard once everything published so far reached it (the channel keeps
    its order: a marker published now arrives last)."""
    marker = f"marker-{uuid.uuid4()}"
    state.announce_closed(marker, "cancelled")
    wait_for(lambda: any(s.job_id == marker for s in heard), timeout=5, what="the marker")
    return [s for s in heard if s.job_id != marker]


def watch(state: State, job: str) -> str | None:
    value = state.backend.command("GET", state.keys.watch(job))
    return None if value is None else str(value)


def count(state: State, job: str) -> int | None:
    value = state.backend.command("GET", state.keys.viewers(job))
    return None if value is None else int(value)


def test_the_last_viewer_out_ends_the_watch_at_once_and_says_so(
    state: State, heard: list[Signal]
) -> None:
    job = str(uuid.uuid4())
    assert state.open_viewer(job, "tcp") is True
    assert state.open_viewer(job, "tcp") is False  # a second tab: not new
    assert (watch(state, job), count(state, job)) == ("tcp", 2)

    state.close_viewers([job])
    assert (watch(state, job), count(state, job)) == ("tcp", 1)  # the other tab still watches
    state.close_viewers([job])

    assert (watch(state, job), count(state, job)) == (None, None)
    assert everything_heard(state, heard) == [Signal(job, "tcp", None), Signal(job, None, None)]


def test_the_count_lives_a_streams_longest_life_and_the_watch_its_ttl(state: State) -> None:
    job = str(uuid.uuid4())
    state.open_viewer(job, "rest")

    viewers_ms = int(state.backend.command("PTTL", state.keys.viewers(job)))
    watch_ms = int(state.backend.command("PTTL", state.keys.watch(job)))
    assert state.stream_life_ms - 5_000 < viewers_ms <= state.stream_life_ms
    assert 40_000 < watch_ms <= 45_000


def test_a_count_gone_astray_leaves_the_watch_to_lapse_by_itself(
    state: State, heard: list[Signal]
) -> None:
    """A count that expired, or a stream of an older producer that never counted itself in:
    leaving announces nothing and leaves no key without a TTL; the watch key lapses as before."""
    job = str(uuid.uuid4())
    state.watch(job, "tcp")  # as an older producer marks the job: no count
    state.close_viewers([job])

    assert watch(state, job) == "tcp"
    assert int(state.backend.command("PTTL", state.keys.watch(job))) > 0
    assert count(state, job) is None
    assert everything_heard(state, heard) == [Signal(job, "tcp", None)]  # its own; no "left"


def test_one_stream_leaves_every_job_it_watched_in_one_round_trip(state: State) -> None:
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    for job in jobs:
        state.open_viewer(job, "tcp")
    state.open_viewer(jobs[0], "tcp")  # another stream also watches the first

    state.close_viewers(jobs)

    assert [watch(state, job) for job in jobs] == ["tcp", None, None]
    assert [count(state, job) for job in jobs] == [1, None, None]
