"""lib/events.py's `JobEvents` flush policy (watched, unwatched, by tokens) and what it records as
delivered (the refund rule), against the real test Redis (TCP) on a settable clock.

The fixtures (`state`, `clock`, `job_id`) are in fixtures/inprocess.py, the helpers in
helpers/events.py.
"""

from __future__ import annotations

import time

import pytest
from helpers.events import Clock, events_of

from lib.events import (
    Delivery,
    JobEvents,
    StreamClosed,
    emit_terminal,
)
from lib.state import State


# The flush policy: watched, unwatched, by tokens; what the attempt learns from its lease.
class Viewer:
    """What the attempt's lease last heard about a live SSE reader."""

    def __init__(self, transport: str | None = None) -> None:
        self.transport = transport

    def __call__(self) -> str | None:
        return self.transport


def test_unwatched_output_and_progress_are_held_until_the_end_and_written_with_the_result(
    state: State, job_id: str, clock: Clock
) -> None:
    events = JobEvents(state, job_id, 1, flush_ms=0, idle_flush_ms=0, viewer=Viewer(), clock=clock)
    events.running()
    events.progress("generating", 10)
    events.delta("a")
    clock.advance(60)
    events.delta("b")
    events.progress("generating", 50)
    events.flush()
    assert events_of(state, job_id) == []  # not even the running status
    events.succeeded({"ok": True})
    written = events_of(state, job_id)
    assert [(t, d.get("text", d.get("pct"))) for t, d in written] == [
        ("status", None),
        ("delta", "ab"),
        ("progress", 50),
        ("result", None),
        ("status", None),
    ]


def test_held_output_goes_out_at_the_first_piece_after_a_viewer_arrives(
    state: State, job_id: str, clock: Clock
) -> None:
    viewer = Viewer()
    events = JobEvents(state, job_id, 1, flush_ms=200, idle_flush_ms=0, viewer=viewer, clock=clock)
    events.delta("held ")
    clock.advance(5)
    viewer.transport = "tcp"
    events.delta("then live")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["held then live"]
    events.delta(" batched")  # now 200 ms batching applies
    assert len(events_of(state, job_id)) == 1


def test_an_idle_interval_flushes_unwatched_output_that_often(
    state: State, job_id: str, clock: Clock
) -> None:
    events = JobEvents(
        state, job_id, 1, flush_ms=100, idle_flush_ms=5000, viewer=Viewer(), clock=clock
    )
    events.delta("a")  # the first piece at once
    clock.advance(1)
    events.delta("b")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a"]
    clock.advance(4)
    events.delta("c")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a", "bc"]


def test_flush_tokens_flushes_after_that_many_pieces(
    state: State, job_id: str, clock: Clock
) -> None:
    events = JobEvents(state, job_id, 1, flush_ms=10_000, flush_tokens=3, clock=clock)
    for piece in "abcdefg":
        events.delta(piece)
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a", "bcd", "efg"]


def test_model_emission_times_ride_along_with_their_delta(
    state: State, job_id: str, clock: Clock
) -> None:
    events = JobEvents(state, job_id, 1, flush_ms=10_000, flush_tokens=2, clock=clock)
    events.delta("a", emitted_at=100.5)
    events.delta("b", emitted_at=101.0)
    events.delta("c", emitted_at=101.25)
    events.delta("d")
    first, second = (d for _, d in events_of(state, job_id))
    assert first["llm_ts"] == [100.5]
    assert second["llm_ts"] == [101.0, 101.25]


@pytest.mark.parametrize(("transport", "published"), [("rest", True), ("tcp", False)])
def test_an_attempt_publishes_only_for_a_reader_that_waits_by_subscription(
    redis_url: str, state: State, job_id: str, clock: Clock, transport: str, published: bool
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(state.keys.notify(job_id))
    try:
        events = JobEvents(state, job_id, 1, flush_ms=0, viewer=Viewer(transport), clock=clock)
        events.delta("a")
        emit_terminal(state, job_id, "cancelled", result=None, error=None, attempt=1)
        heard = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(heard) < 1 + published:
            message = pubsub.get_message(timeout=0.2)
            if message:
                heard.append(message["data"])
        # The closing events are always published (auto); the delta only for a REST reader.
        ids = [entry_id for entry_id, _ in state.read(job_id)]
        assert heard == ([ids[0], ids[-1]] if published else [ids[-1]])
    finally:
        pubsub.close()
        client.close()


# What was delivered: counted when written, recorded ahead (the refund rule) ----------------


class Recorder:
    """A `Delivery.record` that notes each total and what the stream held at that moment."""

    def __init__(self, state: State, job_id: str, fail: Exception | None = None) -> None:
        self.state, self.job_id, self.fail = state, job_id, fail
        self.calls: list[tuple[int, str]] = []

    def __call__(self, total: int) -> None:
        written = "".join(
            str(d["text"]) for t, d in events_of(self.state, self.job_id) if t == "delta"
        )
        self.calls.append((total, written))
        if self.fail is not None:
            raise self.fail


def test_output_is_recorded_before_the_write_that_passes_the_limit_then_at_each_step(
    state: State, job_id: str, clock: Clock
) -> None:
    record = Recorder(state, job_id)
    events = JobEvents(
        state,
        job_id,
        1,
        flush_ms=0,
        flush_chars=1,
        clock=clock,
        delivery=Delivery(record, limit=5, step=4),
    )
    for piece in ("abc", "de", "f", "gh", "ijk", "l"):
        events.delta(piece)
    # 3 and 5 are not past the limit; 6 is, and is recorded while the stream holds only 5;
    # then 11 (6 + 4 reached), not 8 or 12.
    assert record.calls == [(6, "abcde"), (11, "abcdefgh")]
    assert events.delivered == 12


def test_a_failed_record_drops_the_text_rather_than_writing_it_unrecorded(
    state: State, job_id: str, clock: Clock
) -> None:
    record = Recorder(state, job_id, fail=StreamClosed(job_id))
    events = JobEvents(state, job_id, 1, clock=clock, delivery=Delivery(record, limit=0, step=1))
    with pytest.raises(StreamClosed):
        events.delta("secret answer")
    events.flush()
    assert events_of(state, job_id) == [] and events.delivered == 0


def test_held_output_is_not_delivered_until_written_and_a_retry_records_it_first(
    state: State, job_id: str, clock: Clock
) -> None:
    record = Recorder(state, job_id)
    events = JobEvents(
        state,
        job_id,
        1,
        flush_ms=0,
        idle_flush_ms=0,
        viewer=Viewer(),
        clock=clock,
        delivery=Delivery(record, limit=3, step=100),
    )
    events.delta("held text")
    events.flush()
    assert events.delivered == 0 and record.calls == []
    events.retrying("llm_unavailable", "503")
    assert record.calls == [(9, "")]
    assert events.delivered == 9


def test_text_written_with_the_result_is_counted_but_not_recorded(
    state: State, job_id: str, clock: Clock
) -> None:
    record = Recorder(state, job_id)
    events = JobEvents(
        state,
        job_id,
        1,
        idle_flush_ms=0,
        viewer=Viewer(),
        clock=clock,
        delivery=Delivery(record, 0, 1),
    )
    events.delta("the answer")  # held: nobody watches
    events.succeeded({"ok": True})
    assert record.calls == [] and events.delivered == 10  # a success refunds nothing anyway
