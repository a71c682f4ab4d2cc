"""The Redis state contract for event streams: the terminal event, reads and waits, viewers
announced on the watch channel, a watched job's flush in one command (`State.append`) and an open
stream's upkeep. Every test runs on both adapters (TCP and Upstash REST): the `state` fixture is
fixtures/contract_suites.py's. Admission and leases are test_state.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
import redis
from fixtures import contract_suites
from helpers.backends import new_id
from helpers.net import wait_for

import lib.state as lib_state
from lib.errors import RateLimitError
from lib.events import JobEvents, StreamClosed, emit_terminal
from lib.state import Signal, State

state = contract_suites.state  # each adapter in turn


def test_the_terminal_event_is_written_once_and_is_last(state: State) -> None:
    job = new_id()
    events = JobEvents(state, job, 1, flush_ms=0)
    events.running()
    events.delta("hello")
    assert emit_terminal(
        state, job, "cancelled", result=None, error={"code": "cancelled", "message": "x"}, attempt=1
    )
    assert emit_terminal(state, job, "failed", result=None, error=None, attempt=1) is None
    with pytest.raises(StreamClosed):
        events.delta(" world")
    entries = state.read(job)
    types = [fields["t"] for _, fields in entries]
    assert types == ["status", "delta", "error", "status"]
    assert json.loads(entries[-1][1]["d"])["status"] == "cancelled"
    assert state.done(job) == "cancelled"


def test_read_after_an_id_returns_only_later_entries(state: State) -> None:
    job = new_id()
    ids = [state.emit(job, [("progress", {"pct": i})]) for i in range(5)]
    later = state.read(job, after=ids[1])  # type: ignore[arg-type]
    assert [entry_id for entry_id, _ in later] == ids[2:]


def test_wait_returns_at_once_when_entries_exist(state: State) -> None:
    job = new_id()
    first = state.emit(job, [("progress", {"pct": 1})])
    started = time.monotonic()
    assert [e for e, _ in state.wait(job, "0", timeout=5)] == [first]
    assert time.monotonic() - started < 2


def readers_waiting(client: redis.Redis, state: State, job: str) -> int:
    """Readers that Redis holds for a job's next event: clients blocked in XREAD (where the TCP
    adapter waits; other tests' count too) and subscribers of the job's notify channel (where
    the REST adapter waits, through the Upstash stand-in)."""
    blocked = sum(1 for c in client.client_list() if "b" in c["flags"] and c["cmd"] == "xread")
    return blocked + int(client.pubsub_numsub(state.keys.notify(job))[0][1])


def test_wait_wakes_up_when_an_event_is_emitted(state: State, redis_url: str) -> None:
    job = new_id()
    first = state.emit(job, [("progress", {"pct": 1})])
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(state.wait(job, first, timeout=10)))
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        before = readers_waiting(client, state, job)
        waiter.start()
        wait_for(lambda: readers_waiting(client, state, job) > before, what="the reader to block")
    emitted = time.monotonic()
    # As an attempt writes while a subscribed (REST) reader watches: with the id published.
    second = state.emit(job, [("progress", {"pct": 2})], publish=True)
    waiter.join(10)
    assert got and [e for e, _ in got[0]] == [second]  # type: ignore[index]
    assert time.monotonic() - emitted < 5, "the reader waited out its timeout instead"


def test_wait_times_out_empty_without_new_events(state: State) -> None:
    job = new_id()
    first = state.emit(job, [("progress", {"pct": 1})])
    assert state.wait(job, first, timeout=0.3) == []


def test_a_new_viewer_is_announced_once_and_refreshes_are_silent(state: State) -> None:
    job = new_id()
    heard: list[Signal] = []
    stop = threading.Event()

    def listen() -> None:
        for item in state.watchers(stop):
            heard.append(item)

    listener = threading.Thread(target=listen)
    listener.start()
    try:

        def announced() -> bool:
            # A PUBLISH before the listener has subscribed is lost: announce until one is heard.
            state.backend.command("DEL", state.keys.watch(job))
            assert state.watch(job, "rest") is True
            try:
                wait_for(lambda: heard, timeout=0.5)
            except AssertionError:
                return False
            return True

        wait_for(announced, timeout=10, what="the listener to hear a new viewer")
        assert set(heard) == {(job, "rest", None)}
        count = len(heard)
        assert state.watch(job, "rest") is False  # a refresh: the key is still there
        assert state.watch(job, "rest") is False
        other = new_id()
        assert state.watch(other, "tcp") is True
        wait_for(lambda: (other, "tcp", None) in heard, timeout=5, what="the second viewer")
        assert heard[count:] == [(other, "tcp", None)]
    finally:
        stop.set()
        # TCP checks `stop` every second; REST on the next line, a keep-alive within 15 s.
        listener.join(20)
    assert not listener.is_alive()


def test_a_closed_stream_is_announced_on_the_watch_channel_as_done(state: State) -> None:
    job = new_id()
    heard: list[Signal] = []
    stop = threading.Event()

    def listen() -> None:
        for item in state.watchers(stop):
            heard.append(item)

    listener = threading.Thread(target=listen)
    listener.start()
    try:

        def announced() -> bool:
            # A PUBLISH before the listener has subscribed is lost: announce until one is heard.
            state.announce_closed(job, "cancelled")
            try:
                wait_for(lambda: heard, timeout=0.5)
            except AssertionError:
                return False
            return True

        wait_for(announced, timeout=10, what="the listener to hear the closing")
        assert set(heard) == {Signal(job, None, "cancelled")}
    finally:
        stop.set()
        listener.join(20)
    assert not listener.is_alive()


# A watched job's flush in one command (State.append) -----------------------------------------


def test_a_plain_append_writes_one_entry_into_an_open_stream_and_keeps_its_ttl(
    state: State,
) -> None:
    job = new_id()
    state.emit(job, [("status", {"status": "running", "attempt": 1})], refresh_ttl=True)
    entry = state.append(job, "delta", {"text": "hi", "attempt": 1})
    assert entry is not None
    assert [e for e, _ in state.read(job)][-1] == entry
    assert 0 < state.backend.command("TTL", state.keys.events(job)) <= state.events_ttl


def test_a_plain_append_never_creates_a_stream(state: State) -> None:
    job = new_id()
    assert state.append(job, "delta", {"text": "hi"}) is None
    assert state.backend.command("EXISTS", state.keys.events(job)) == 0


def test_a_plain_append_after_the_terminal_status_writes_nothing(state: State) -> None:
    job = new_id()
    state.emit(job, [("status", {"status": "running", "attempt": 1})], refresh_ttl=True)
    closing = emit_terminal(state, job, "cancelled", result=None, error=None, attempt=1)
    assert state.append(job, "delta", {"text": "late", "attempt": 1}) is None
    entries = state.read(job)
    assert entries[-1][0] == closing
    assert json.loads(entries[-1][1]["d"])["status"] == "cancelled"


def test_a_watched_attempt_stops_at_its_next_flush_once_a_cancel_closed_its_stream(
    state: State,
) -> None:
    job = new_id()
    events = JobEvents(state, job, 1, flush_ms=0, viewer=lambda: "tcp")
    events.running()
    events.delta("first")
    emit_terminal(state, job, "cancelled", result=None, error=None, attempt=1)
    with pytest.raises(StreamClosed):
        events.delta("second")
    assert events.written == ["first"]
    assert [json.loads(f["d"]).get("text") for _, f in state.read(job)].count("second") == 0


# An open event stream's upkeep: its slot and the job's `watch` key --------------------------


def test_a_slot_opening_is_five_commands_and_a_refresh_one(
    redis_url: str, redis_prefix: str
) -> None:
    import redis

    from lib.state.tcp import TcpBackend

    state = State(TcpBackend(redis_url), prefix=redis_prefix)
    direct = redis.Redis.from_url(redis_url, decode_responses=True)

    def used(step: Callable[[], object]) -> dict[str, int]:
        before = {k: v["calls"] for k, v in direct.info("commandstats").items()}
        step()
        after = {k: v["calls"] for k, v in direct.info("commandstats").items()}
        out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        out.pop("cmdstat_info", None)
        return out

    try:
        user = new_id()
        state.hold_stream(user, "warm", 2)  # the script loaded, as in a running deployment
        state.drop_stream(user, "warm")
        # Opening drops the lapsed slots and counts the open ones; the stream id is new.
        assert used(lambda: state.hold_stream(user, "s1", 2)) == {
            "cmdstat_evalsha": 1,
            "cmdstat_zremrangebyscore": 1,
            "cmdstat_zcard": 1,
            "cmdstat_zadd": 1,
            "cmdstat_pexpire": 1,
        }
        # A refresh (every STREAM_SLOT_TTL / 3 of every open stream) only moves the lapse. It
        # comes seconds later in a deployment; here, at least in the next millisecond (in the
        # same one the lapse would not move, and ZADD CH could not tell that from a lost slot).
        opened_ms = int(time.time() * 1000)
        wait_for(lambda: int(time.time() * 1000) > opened_ms, timeout=1)
        assert used(lambda: state.hold_stream(user, "s1", 2, refresh=True)) == {"cmdstat_zadd": 1}
    finally:
        direct.close()
        state.close()


def test_a_refresh_keeps_a_slot_that_lapsed_and_the_set_keeps_a_ttl(
    redis_backend: object, redis_prefix: str
) -> None:
    slots = State(
        redis_backend,  # type: ignore[arg-type]
        prefix=redis_prefix,
        stream_slot_ttl=1.0,
        stream_life=0,  # the set lapses with its slot: the refresh must not make it TTL-less
    )
    user = new_id()
    key = slots.keys.streams(user)
    slots.hold_stream(user, "stalled", 1)
    wait_for(lambda: not slots.backend.command("EXISTS", key), timeout=5, what="the set to lapse")
    slots.hold_stream(user, "stalled", 1, refresh=True)  # it comes back: counted again
    assert 0 < int(slots.backend.command("PTTL", key)) <= 1000
    with pytest.raises(RateLimitError):
        slots.hold_stream(user, "another", 1)
    # Lapsed but not yet dropped: an opening drops it, and its refresh puts it back.
    wait_for(
        lambda: int(slots.backend.command("ZCOUNT", key, int(time.time() * 1000), "+inf")) == 0,
        timeout=5,
        what="the slot to lapse",
    )
    slots.hold_stream(user, "another", 1)
    slots.hold_stream(user, "stalled", 1, refresh=True)
    assert int(slots.backend.command("ZCARD", key)) == 2
    assert 0 < int(slots.backend.command("PTTL", key)) <= 1000


def test_the_slot_set_outlives_every_slot_of_a_stream_that_refreshes(
    redis_backend: object, redis_prefix: str
) -> None:
    slots = State(redis_backend, prefix=redis_prefix, stream_slot_ttl=1.0, stream_life=5)  # type: ignore[arg-type]
    user = new_id()
    key = slots.keys.streams(user)
    slots.hold_stream(user, "live", 2)
    assert 5000 < int(slots.backend.command("PTTL", key)) <= 6000  # its longest life
    for _ in range(3):  # the stream's refreshes, past its slot's TTL
        time.sleep(0.6)
        slots.hold_stream(user, "live", 2, refresh=True)
        lapse = float(slots.backend.command("ZSCORE", key, "live"))
        expires = time.time() * 1000 + int(slots.backend.command("PTTL", key))
        assert lapse <= expires
    assert int(slots.backend.command("ZCOUNT", key, int(time.time() * 1000), "+inf")) == 1


def test_a_viewer_refreshes_its_watch_key_well_within_its_ttl() -> None:
    # A reader refreshes the key at its first loop after WATCH_REFRESH s, and a loop waits at
    # most one heartbeat (SSE_HEARTBEAT_SECONDS <= 15): 30 s between refreshes at worst.
    from lib.config import Settings

    longest_heartbeat = Settings.model_fields["sse_heartbeat_seconds"].metadata
    assert any(getattr(m, "le", None) == 15 for m in longest_heartbeat)
    assert lib_state.WATCH_REFRESH == lib_state.STREAM_SLOT_TTL / 3  # one cadence for both
    assert lib_state.WATCH_REFRESH + 15 <= lib_state.WATCH_TTL_MS / 1000 - 15
