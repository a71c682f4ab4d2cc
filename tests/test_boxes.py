"""The box registry (lib/boxes.py): every test runs on both Redis adapters (TCP, Upstash REST)."""

from __future__ import annotations

import collections
import uuid

import pytest
from helpers.net import wait_for

from lib.boxes import Heartbeat, Registry, destination
from lib.config import Settings
from lib.errors import RateLimitError
from lib.state import State

A, B, C = "https://a.example.com", "https://b.example.com", "https://c.example.com"


@pytest.fixture
def state(redis_backend: object, redis_prefix: str) -> State:
    return State(redis_backend, prefix=redis_prefix, box_ttl=2.0)  # type: ignore[arg-type]


@pytest.fixture
def registry(state: State) -> Registry:
    return Registry(state)


def admit(state: State, boxes: list[str]) -> str | None:
    """One submit's admission, as the producer runs it with several boxes."""
    return state.admit(
        str(uuid.uuid4()),
        "paid",
        str(uuid.uuid4()),
        first_event=("status", {"status": "queued"}),
        index_max=100,
        boxes=boxes,
    )


def test_a_beat_announces_a_box_with_its_free_capacity(registry: Registry) -> None:
    assert registry.beat(A, "p1", 3, 10) == 1
    assert registry.beat(A, "p2", 2, 10) == 2
    box = registry.live()[A]
    assert (box.max_jobs, box.running, box.processes, box.free) == (10, 5, 2, 5)


def test_the_box_with_the_most_room_is_picked_and_its_room_reserved(registry: Registry) -> None:
    registry.beat(A, "p1", 8, 10)
    registry.beat(B, "p1", 5, 10)
    # B has 5 free and A 2: B takes jobs until its reservations bring it to A's level.
    picks = [registry.pick([A, B]) for _ in range(3)]
    assert picks == [B, B, B]
    assert {registry.pick([A, B]) for _ in range(2)} == {A, B}


def test_a_burst_spreads_over_equal_boxes(registry: Registry) -> None:
    registry.beat(A, "p1", 0, 50)
    registry.beat(B, "p1", 0, 50)
    picks = collections.Counter(registry.pick([A, B]) for _ in range(40))
    assert picks == {A: 20, B: 20}


def test_a_box_with_no_room_gets_no_job_while_another_has_some(registry: Registry) -> None:
    registry.beat(A, "p1", 10, 10)
    registry.beat(B, "p1", 9, 10)
    assert registry.pick([A, B]) == B
    # Both full now: the least loaded still gets it, so a job is never dropped.
    assert registry.pick([A, B]) in (A, B)


def test_a_beat_clears_its_box_reservations(state: State, registry: Registry) -> None:
    registry.beat(A, "p1", 0, 3)
    registry.beat(B, "p1", 0, 1)
    assert [registry.pick([A, B]) for _ in range(2)] == [A, A]
    reserved = state.keys.box_reservations()
    assert state.backend.command("HGET", reserved, A) == "2"
    # A's next beat counts the jobs it runs, those sent to it included: the reservations go.
    registry.beat(A, "p1", 0, 3)
    assert state.backend.command("HGET", reserved, A) is None


def test_only_the_listed_boxes_are_picked(registry: Registry) -> None:
    registry.beat(C, "p1", 0, 100)
    registry.beat(A, "p1", 9, 10)
    assert registry.pick([A, B]) == A
    assert registry.pick([B]) is None


def test_a_stale_heartbeat_is_ignored_and_dropped_by_the_next_beat(
    state: State, registry: Registry
) -> None:
    registry.beat(A, "dead", 0, 100)
    assert registry.pick([A, B]) == A
    # A's announcement lapses after the TTL (2 s here) without a beat; B keeps beating.
    wait_for(
        lambda: registry.beat(B, "p1", 9, 10) and A not in registry.live(),
        timeout=5,
        interval=0.2,
        what="A's announcement to lapse",
    )
    assert registry.pick([A, B]) == B
    assert registry.beat(B, "p1", 9, 10) == 1
    fields = state.backend.command("HKEYS", state.keys.boxes())
    assert list(fields) == [f"{B} p1"]


def test_the_registry_expires_when_every_box_is_gone(state: State, registry: Registry) -> None:
    registry.beat(A, "p1", 0, 10)
    ttl = int(state.backend.command("PTTL", state.keys.boxes()))
    assert 2000 < ttl <= 10_000  # past the sweeps of 10 beats: 15 beats (3 per 2 s TTL here)
    registry.leave(A, "p1")
    assert registry.live() == {} and registry.pick([A]) is None


def test_admission_picks_the_box_in_the_same_script(state: State, registry: Registry) -> None:
    assert admit(state, [A, B]) is None  # nobody announced: the producer falls back
    registry.beat(A, "p1", 10, 10)
    registry.beat(B, "p1", 0, 10)
    assert admit(state, [A, B]) == B
    assert state.live("paid") == 2


def test_a_refused_admission_picks_no_box_and_reserves_nothing(state: State) -> None:
    registry = Registry(state)
    registry.beat(A, "p1", 0, 1)
    full = State(state.backend, prefix=state.keys.prefix, limits={"free": (0, 0), "paid": (0, 0)})
    with pytest.raises(RateLimitError):
        admit(full, [A])
    assert state.backend.command("HGETALL", state.keys.box_reservations()) in ({}, [], None)


def test_the_destination_is_the_picked_box_or_the_first_listed() -> None:
    settings = Settings(worker_urls=f"{A},{B}/", worker_url="")  # type: ignore[call-arg]
    assert settings.boxes == [A, B]
    assert destination(settings, B) == B
    assert destination(settings, None) == A
    assert destination(settings, C) == A  # announced, but not a box of ours


def test_a_heartbeat_announces_until_it_drains_or_stops(state: State) -> None:
    settings = Settings(  # type: ignore[call-arg]
        worker_url=A,
        worker_urls=f"{A},{B}",
        box_heartbeat_seconds=0.2,
        web_concurrency=2,
        gunicorn_threads=8,
        # Inline, said explicitly: a box's room is its request threads (detached: 500 a process).
        execution_mode="inline",
    )
    draining = [False]
    heartbeat = Heartbeat(settings, state, lambda: 3, lambda: draining[0])
    registry = Registry(state)
    heartbeat.start()
    try:
        box = registry.live()[A]
        assert (box.max_jobs, box.running) == (16, 3)  # WEB_CONCURRENCY x GUNICORN_THREADS
        draining[0] = True
        wait_for(lambda: A not in registry.live(), timeout=5, what="a draining box to leave")
        draining[0] = False
        wait_for(lambda: A in registry.live(), timeout=5, what="the box to come back")
    finally:
        heartbeat.stop()
    assert A not in registry.live()


def test_cs_doctor_says_which_listed_boxes_are_live(state: State, registry: Registry) -> None:
    from lib.cli.doctor import check_boxes

    settings = Settings(worker_urls=f"{A},{B}")  # type: ignore[call-arg]
    assert check_boxes(settings, state).ok is False  # none live: every job goes to A
    registry.beat(A, "p1", 3, 10)
    registry.beat(C, "p1", 0, 10)
    some = check_boxes(settings, state)
    assert (some.ok, some.target) == (None, "1 of 2 live")
    assert some.detail == f"{A} 7 free; {B} silent; {C} announced but not listed"
    registry.beat(B, "p1", 0, 10)
    assert check_boxes(settings, state).ok is True


def test_a_beat_between_sweeps_writes_its_own_announcement_only(
    state: State, registry: Registry
) -> None:
    registry.beat(A, "gone", 0, 10)
    state.backend.command("HSET", state.keys.boxes(), f"{A} old", "1 0 10")  # lapsed long ago
    assert registry.beat(B, "p1", 0, 10, sweep=False) is None
    assert len(state.backend.command("HKEYS", state.keys.boxes())) == 3
    assert registry.beat(B, "p1", 0, 10) == 2  # the sweep drops the lapsed one
    assert registry.pick([A, B]) in (A, B)


def test_one_box_announces_nothing(state: State) -> None:
    settings = Settings(worker_url=A, box_heartbeat_seconds=0.2)  # type: ignore[call-arg]
    heartbeat = Heartbeat(settings, state, lambda: 0)
    heartbeat.start()
    heartbeat.stop()
    assert Registry(state).live() == {}
    assert not state.backend.command("EXISTS", state.keys.boxes())


def test_a_heartbeat_survives_redis_being_down() -> None:
    from helpers.net import free_port

    from lib.state.tcp import TcpBackend

    backend = TcpBackend(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    settings = Settings(worker_url=A, worker_urls=f"{A},{B}")  # type: ignore[call-arg]
    heartbeat = Heartbeat(settings, State(backend), lambda: 0)
    try:
        assert heartbeat.beat() is False and heartbeat.beat() is False  # logged once, no raise
    finally:
        backend.close()
