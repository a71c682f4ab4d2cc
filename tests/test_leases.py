"""The lease heartbeat and the watch listener of one worker process (lib/leases.py), on the real
Redis: what the flush policy reads (`Lease.watch`) follows the newest news of the job's viewers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.net import wait_for

from lib.leases import Lease, Leases
from lib.state import Renewal, State


class GatedState(State):
    """The real State, whose lease renewal holds its answer until the test lets it go: the
    heartbeat has read the keys, and the test makes something happen before the answer lands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read = threading.Event()
        self.release = threading.Event()

    def renew_many(self, leases: list[tuple[str, str, str, str, bool]]) -> list[Renewal]:
        answers = super().renew_many(leases)
        self.read.set()
        self.release.wait(10)
        return answers


@pytest.fixture
def state(redis_backend: object, redis_prefix: str) -> GatedState:
    return GatedState(redis_backend, prefix=redis_prefix)  # type: ignore[arg-type]


@pytest.fixture
def leases(state: GatedState) -> Iterator[Leases]:
    running = Leases(state, interval=0.2)
    yield running
    running.stop()
    state.release.set()


def held(state: State, leases: Leases) -> Lease:
    job, user, token = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex
    assert state.acquire(job, "paid", user, token).watch is None  # nobody watches yet
    lease = Lease(job, "paid", user, token)
    leases.add(lease)
    return lease


def test_a_viewer_heard_after_a_heartbeat_read_the_key_stays_heard(
    state: GatedState, leases: Leases
) -> None:
    lease = held(state, leases)
    leases.start()
    state.release.set()

    def heard() -> bool:
        # A PUBLISH before the listener has subscribed is lost: announce until one is heard.
        state.close_viewers([lease.job_id])
        state.open_viewer(lease.job_id, "tcp")
        try:
            wait_for(lambda: lease.watch == "tcp", timeout=0.5)
        except AssertionError:
            return False
        return True

    wait_for(heard, timeout=10, what="the listener to hear a viewer")
    state.close_viewers([lease.job_id])  # the viewer leaves, and the heartbeat will read that
    wait_for(lambda: lease.watch is None, timeout=5, what="the leaving")
    state.release.clear()
    state.read.clear()
    wait_for(state.read.is_set, timeout=5, what="a heartbeat that read no viewer")

    state.open_viewer(lease.job_id, "tcp")  # a viewer comes back before that answer lands
    wait_for(lambda: lease.watch == "tcp", timeout=5, what="the viewer's announcement")
    state.read.clear()
    state.release.set()  # that answer lands; the next heartbeat is held once it has read
    state.release.clear()
    wait_for(state.read.is_set, timeout=5, what="the answer to land, and the next read")

    assert lease.watch == "tcp"  # the answer read before the viewer came did not undo it
    state.release.set()


def test_a_heartbeat_notices_a_viewer_the_channel_did_not_announce(
    state: GatedState, leases: Leases
) -> None:
    lease = held(state, leases)
    state.release.set()
    state.watch(lease.job_id, "rest")  # announced before the listener runs: lost
    leases.start()

    wait_for(lambda: lease.watch == "rest", timeout=5, what="the heartbeat to read the key")
