"""lib/events.py: SSE frames, terminal detection, event data, and `JobEvents` delta batching.

Batching runs against the real test Redis (TCP); time is a plain settable clock passed as
`clock=`, so "250 ms later" is exact and instant (0.125 s steps are exact in binary).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from lib.events import (
    Delivery,
    JobEvents,
    StreamClosed,
    data,
    emit_terminal,
    is_terminal,
    sse_frame,
)
from lib.state import State
from lib.state.tcp import TcpBackend

# Pure parts ----------------------------------------------------------------------------------


def test_an_sse_frame_has_id_event_and_data_lines_and_ends_with_a_blank_line() -> None:
    frame = sse_frame("1700000000000-0", "delta", '{"text":"hi"}')
    assert frame == 'id: 1700000000000-0\nevent: delta\ndata: {"text":"hi"}\n\n'


def test_status_events_with_a_final_status_are_terminal() -> None:
    for status in ("succeeded", "failed", "cancelled"):
        assert is_terminal("status", json.dumps({"status": status, "attempt": 1}))


def test_running_retrying_and_queued_statuses_are_not_terminal() -> None:
    for status in ("queued", "running", "retrying"):
        assert not is_terminal("status", json.dumps({"status": status, "attempt": 1}))


def test_events_other_than_status_are_never_terminal() -> None:
    assert not is_terminal("result", json.dumps({"status": "succeeded"}))
    assert not is_terminal("delta", json.dumps({"text": "succeeded"}))


def test_event_data_carries_its_fields_the_job_id_and_a_unix_timestamp() -> None:
    before = time.time()
    payload = data("job-1", text="hello", attempt=2)
    after = time.time()
    assert payload["text"] == "hello"
    assert payload["attempt"] == 2
    assert payload["job_id"] == "job-1"
    assert before - 0.001 <= payload["ts"] <= after + 0.001


# Batching against real Redis ----------------------------------------------------------------


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def state(redis_url: str, redis_prefix: str) -> Iterator[State]:
    backend = TcpBackend(redis_url)
    yield State(backend, prefix=redis_prefix)
    backend.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


def events_of(state: State, job_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(fields["t"], json.loads(fields["d"])) for _, fields in state.read(job_id)]


def writer(state: State, job_id: str, clock: Clock, attempt: int = 1) -> JobEvents:
    return JobEvents(state, job_id, attempt, flush_ms=250, flush_chars=10, clock=clock)


def test_the_first_delta_is_written_at_once(state: State, job_id: str, clock: Clock) -> None:
    events = writer(state, job_id, clock)
    events.delta("Hi")
    [(event_type, payload)] = events_of(state, job_id)
    assert event_type == "delta"
    assert {k: payload[k] for k in ("text", "attempt", "job_id")} == {
        "text": "Hi",
        "attempt": 1,
        "job_id": job_id,
    }
    assert events.flushes == 1


def test_later_deltas_wait_until_enough_characters_arrive(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    events.delta("bcd")
    events.delta("efg")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a"]
    events.delta("hijk")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a", "bcdefghijk"]
    assert events.flushes == 2


def test_later_deltas_wait_until_flush_ms_has_elapsed(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    clock.advance(0.125)
    events.delta("b")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a"]
    clock.advance(0.125)
    events.delta("c")
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a", "bc"]


def test_empty_deltas_write_nothing(state: State, job_id: str, clock: Clock) -> None:
    events = writer(state, job_id, clock)
    events.delta("")
    events.flush()
    assert events_of(state, job_id) == []


def test_progress_writes_pending_text_before_the_progress_event(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    events.delta("b")
    events.progress("generating", 150)
    assert [(t, d.get("text", d.get("pct"))) for t, d in events_of(state, job_id)] == [
        ("delta", "a"),
        ("delta", "b"),
        ("progress", 100),
    ]


def test_flush_writes_pending_text_and_nothing_when_none_is_pending(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    events.delta("b")
    events.flush()
    events.flush()
    assert [d["text"] for _, d in events_of(state, job_id)] == ["a", "b"]


def test_succeeded_writes_pending_text_the_result_and_the_terminal_status_and_closes(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.running()
    events.delta("a")
    events.delta("{...}")
    events.succeeded({"score": 80})
    written = events_of(state, job_id)
    assert [t for t, _ in written] == ["status", "delta", "delta", "result", "status"]
    assert written[2][1]["text"] == "{...}"
    assert written[3][1]["result"] == {"score": 80}
    assert written[4][1]["status"] == "succeeded"
    assert state.done(job_id) == "succeeded"


def test_succeeded_after_a_cancel_writes_nothing_not_even_its_pending_text(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    events.delta("b")
    emit_terminal(state, job_id, "cancelled", result=None, error=None, attempt=1)
    events.succeeded({"ok": True})
    assert [(t, d.get("text", d.get("status"))) for t, d in events_of(state, job_id)] == [
        ("delta", "a"),
        ("status", "cancelled"),
    ]
    assert state.done(job_id) == "cancelled"


def test_a_delta_after_the_stream_closed_raises_stream_closed(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.succeeded({"ok": True})
    with pytest.raises(StreamClosed):
        events.delta("late")
    assert [t for t, _ in events_of(state, job_id)] == ["result", "status"]


def test_a_cancel_by_another_writer_stops_the_attempt_at_its_next_flush(
    state: State, job_id: str, clock: Clock
) -> None:
    events = writer(state, job_id, clock)
    events.delta("a")
    emit_terminal(
        state,
        job_id,
        "cancelled",
        result=None,
        error={"code": "cancelled", "message": "by user"},
        attempt=1,
    )
    events.delta("b")  # buffered, below both thresholds: nothing is written yet
    with pytest.raises(StreamClosed):
        events.progress("generating", 50)
    assert [t for t, _ in events_of(state, job_id)] == ["delta", "error", "status"]


def test_retrying_writes_a_retryable_error_and_keeps_the_stream_open(
    state: State, job_id: str, clock: Clock
) -> None:
    first = writer(state, job_id, clock, attempt=1)
    first.running()
    first.delta("partial")
    first.retrying("llm_unavailable", "the model provider answered 503")
    assert state.done(job_id) is None
    second = writer(state, job_id, clock, attempt=2)
    second.running()
    second.delta("again")
    written = events_of(state, job_id)
    assert [(t, d.get("status")) for t, d in written] == [
        ("status", "running"),
        ("delta", None),
        ("error", None),
        ("status", "retrying"),
        ("status", "running"),
        ("delta", None),
    ]
    assert written[2][1]["retryable"] is True
    assert written[4][1]["attempt"] == 2
    assert written[5][1] == {
        "text": "again",
        "attempt": 2,
        "job_id": job_id,
        "ts": written[5][1]["ts"],
    }


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
