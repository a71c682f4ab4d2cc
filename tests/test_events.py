"""lib/events.py: SSE frames, terminal detection, event data, and `JobEvents` delta batching.

Batching runs against the real test Redis (TCP); time is a plain settable clock passed as
`clock=`, so "250 ms later" is exact and instant (0.125 s steps are exact in binary). The
fixtures (`state`, `clock`, `job_id`) are in fixtures/inprocess.py, the helpers in
helpers/events.py.
"""

from __future__ import annotations

import json
import time

import pytest
from helpers.backends import Counting
from helpers.events import Clock, events_of, writer

from lib.events import (
    StreamClosed,
    data,
    emit_terminal,
    is_terminal,
    sse_frame,
)
from lib.state import State

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


def test_a_watched_flush_after_the_running_status_is_plain_xadds_only(
    state: State, job_id: str, clock: Clock
) -> None:
    counting = Counting(state.backend)
    state.backend = counting  # type: ignore[assignment]
    events = writer(state, job_id, clock)
    events.running()  # the EMIT script: the stream exists, with its TTL
    assert counting.calls == [("script", "emit")]
    events.delta("Hi")
    events.progress("generating", 35)  # written at once while watched, with the text before it
    assert counting.calls[1:] == [("command", "XADD")] * 2
    assert [t for t, _ in events_of(state, job_id)] == ["status", "delta", "progress"]
    assert state.backend.command("TTL", state.keys.events(job_id)) > 0
    assert events.written == ["Hi"] and events.delivered == 2
