"""Building, batching and serialising a job's events.

`JobEvents` is what an attempt uses to talk to the browser: status, progress, batched deltas,
the result and errors. Deltas are flushed by size or by time, and the first one at once, so the
first tokens show up quickly while a long answer costs few Redis commands.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lib.errors import AppError
from lib.models import TERMINAL, EventType, Job, StreamStatus
from lib.state import State

log = logging.getLogger("cs.events")


class StreamClosed(Exception):
    """The job's stream was closed by a terminal event (usually a cancel); stop working."""


def data(job_id: str, **fields: Any) -> dict[str, Any]:
    """An event's `data`: its fields plus `job_id` and `ts` (unix seconds)."""
    return {**fields, "job_id": job_id, "ts": round(time.time(), 3)}


def sse_frame(entry_id: str, event_type: str, payload: str) -> str:
    """One Server-Sent-Events frame for a stream entry."""
    return f"id: {entry_id}\nevent: {event_type}\ndata: {payload}\n\n"


def is_terminal(event_type: str, payload: str) -> bool:
    if event_type != EventType.STATUS:
        return False
    status = json.loads(payload).get("status")
    return status in TERMINAL


@dataclass
class Delivery:
    """Write-ahead record of how much of an attempt's model output a client can read.

    Every delta written to the job's stream is readable by its owner (the stream replays from
    the first event), so written is delivered, watched or not. Refunds depend on it (SPEC
    "Delivered output is paid for"): once more than `limit` characters were delivered, a
    failure or cancel refunds nothing. `record(total)` stores the total durably where the
    refund is decided (`cs_record_delivered`); it is called before the write that takes the
    total past `limit`, then again every `step` characters, so the refund decision never sees
    less than a client could already read. `record` raises to stop the write (the job is no
    longer this attempt's); the text is then dropped, never written unrecorded.
    """

    record: Callable[[int], None]
    limit: int
    step: int
    recorded: int = 0

    def before_write(self, total: int) -> None:
        """Record `total` first when writing it crosses the limit or the next step."""
        mark = self.limit if self.recorded <= self.limit else self.recorded + self.step - 1
        if total > mark:
            self.record(total)
            self.recorded = total


class JobEvents:
    """The event writer of one attempt of one job.

    Deltas are batched by the flush policy (`lib.config`, DELTA_FLUSH_*): while a viewer
    watches (`viewer()` names its transport), the first piece goes at once and then every
    `flush_ms`, `flush_chars` or `flush_tokens` pieces; while nobody watches, every
    `idle_flush_ms`, or, at 0, not until a viewer comes or the attempt ends. Progress held
    meanwhile is coalesced to the latest. Redis is billed per command, so an unwatched job
    writes its text once, with its result.

    `delivered` counts the delta characters this attempt wrote, `written` holds their text;
    with a `delivery`, each write of delta text is recorded ahead as that says (see `Delivery`).
    """

    def __init__(
        self,
        state: State,
        job_id: str,
        attempt: int,
        *,
        flush_ms: int = 200,
        flush_chars: int = 600,
        flush_tokens: int = 0,
        idle_flush_ms: int | None = None,
        viewer: Callable[[], str | None] = lambda: "tcp",
        clock: Callable[[], float] = time.monotonic,
        delivery: Delivery | None = None,
    ) -> None:
        self.state = state
        self.job_id = job_id
        self.attempt = attempt
        self.flush_s = flush_ms / 1000
        self.idle_s = (flush_ms if idle_flush_ms is None else idle_flush_ms) / 1000
        self.flush_chars = flush_chars
        self.flush_tokens = flush_tokens
        self._viewer = viewer
        self._clock = clock
        self._buffer: list[str] = []
        self._buffered = 0
        self._stamps: list[float] = []
        self._progress: dict[str, Any] | None = None
        self._running: dict[str, Any] | None = None  # the attempt's `running`, while held
        self._last_flush: float | None = None
        self.flushes = 0
        self.delivery = delivery
        self.delivered = 0
        self.written: list[str] = []  # the delta text written: a cancelled job's partial
        self._opened = False  # a status of this attempt was written: the stream has its TTL

    def _write(
        self,
        events: list[tuple[str, dict[str, Any]]],
        *,
        terminal: str | None = None,
        refresh_ttl: bool = False,
        record: bool = True,
    ) -> str | None:
        """Append `events`; delta text is recorded ahead (unless `record` is false: the job
        has already succeeded) and counted once written. None when the stream is closed."""
        chars = sum(len(e[1]["text"]) for e in events if e[0] == EventType.DELTA)
        if chars and record and self.delivery is not None:
            self.delivery.before_write(self.delivered + chars)
        publish = self._viewer() == "rest" or self.state.publish == "always"
        plain = self._opened and not publish and terminal is None and not refresh_ttl
        if plain and all(e[0] != EventType.STATUS for e in events):
            # A watched job's flush (a delta, with the latest progress now and then): one plain
            # XADD per event instead of the EMIT script's EVALSHA and EXISTS on top. This
            # attempt's first status (EMIT) refreshed the stream's TTL; a closed stream refuses
            # these writes just as EMIT would.
            return self._append(events)
        entry = self.state.emit(
            self.job_id, events, terminal=terminal, refresh_ttl=refresh_ttl, publish=publish
        )
        self._opened = self._opened or (entry is not None and refresh_ttl)
        if entry is not None:
            self.delivered += chars
            self.written += [e[1]["text"] for e in events if e[0] == EventType.DELTA]
        return entry

    def _append(self, events: list[tuple[str, dict[str, Any]]]) -> str | None:
        """Plain XADDs in order, each delta counted as written once it is; None as soon as the
        stream refuses one (it was closed: nothing after that is written)."""
        entry = None
        for event_type, fields in events:
            entry = self.state.append(self.job_id, event_type, fields)
            if entry is None:
                return None
            if event_type == EventType.DELTA:
                self.delivered += len(fields["text"])
                self.written.append(fields["text"])
        return entry

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> str:
        entry = self._write(events, refresh_ttl=any(e[0] == EventType.STATUS for e in events))
        if entry is None:
            raise StreamClosed(self.job_id)
        return entry

    def _pending(self) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if self._running is not None:
            out.append((EventType.STATUS, self._running))
            self._running = None
        if self._buffer:
            fields: dict[str, Any] = {"text": "".join(self._buffer), "attempt": self.attempt}
            if self._stamps:  # when each token was emitted (offline LLM only: benchmarks)
                fields["llm_ts"] = self._stamps
            out.append((EventType.DELTA, data(self.job_id, **fields)))
            self._buffer = []
            self._buffered = 0
            self._stamps = []
            self.flushes += 1
            self._last_flush = self._clock()
        if self._progress is not None:
            out.append((EventType.PROGRESS, self._progress))
            self._progress = None
        return out

    def _holding(self) -> bool:
        return self._viewer() is None and self.idle_s <= 0

    def _due(self) -> bool:
        if self._holding():
            return False
        if self._last_flush is None:
            return True
        if self.flush_tokens and len(self._buffer) >= self.flush_tokens:
            return True
        if self._buffered >= self.flush_chars:
            return True
        interval = self.flush_s if self._viewer() is not None else self.idle_s
        return self._clock() - self._last_flush >= interval

    def running(self) -> None:
        """Announce the attempt; a higher attempt tells clients to drop earlier text. While
        nobody watches, it is held too, and written first with the attempt's next events."""
        self._running = data(self.job_id, status=StreamStatus.RUNNING, attempt=self.attempt)
        if not self._holding():
            self._emit(self._pending())

    def settle(self) -> None:
        """Write what is held, whether or not anyone watches: a pipeline's step ended, and the
        next step's attempt writes its own. Raises StreamClosed when the job was closed."""
        pending = self._pending()
        if pending:
            self._emit(pending)

    def step(self, index: int, name: str, total: int) -> None:
        """A pipeline's step begins (its `delta`s and `progress` follow): with the text
        before it, at once, whether or not anyone watches (clients reset their text on it)."""
        self._emit(
            self._pending()
            + [(EventType.STEP, data(self.job_id, step=index, name=name, steps=total))]
        )

    def progress(self, stage: str, pct: int) -> None:
        """Report a stage: at once while watched (with the text before it), else held."""
        self._progress = data(self.job_id, stage=stage, pct=max(0, min(100, pct)))
        if not self._holding():
            self._emit(self._pending())

    def delta(self, text: str, *, emitted_at: float | None = None) -> None:
        """Buffer model output and flush it when the policy says so. `emitted_at` is when the
        model emitted the piece, if it says (the offline LLM does, for benchmarks)."""
        if not text:
            return
        self._buffer.append(text)
        self._buffered += len(text)
        if emitted_at is not None:
            self._stamps.append(emitted_at)
        if self._due():
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, unless the policy holds it (nobody watches)."""
        if self._holding():
            return
        pending = self._pending()
        if pending:
            self._emit(pending)

    def succeeded(self, result: dict[str, Any]) -> None:
        """Flush, then the result and the terminal `succeeded` status, in one atomic step."""
        self._write(
            self._pending()
            + [
                (EventType.RESULT, data(self.job_id, result=result)),
                (
                    EventType.STATUS,
                    data(self.job_id, status=StreamStatus.SUCCEEDED, attempt=self.attempt),
                ),
            ],
            terminal=StreamStatus.SUCCEEDED,
            record=False,
        )

    def retrying(self, code: str, message: str) -> None:
        """The attempt failed but the broker will redeliver. Its held text is written too, so
        it counts as delivered (recorded ahead like any flush)."""
        self._write(
            self._pending()
            + [
                (EventType.ERROR, data(self.job_id, code=code, message=message, retryable=True)),
                (
                    EventType.STATUS,
                    data(self.job_id, status=StreamStatus.RETRYING, attempt=self.attempt),
                ),
            ],
        )


def emit_terminal(
    state: State,
    job_id: str,
    status: str,
    *,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    attempt: int,
) -> str | None:
    """Close the job's stream with its final events, once: a second call writes nothing.

    Used by every path that makes a job terminal (worker, cancel, failure callback), so whoever
    gets there first writes the terminal event and the stream always ends with exactly one.
    """
    events: list[tuple[str, dict[str, Any]]] = []
    if status == StreamStatus.SUCCEEDED and result is not None:
        events.append((EventType.RESULT, data(job_id, result=result)))
    if status != StreamStatus.SUCCEEDED and error:
        events.append(
            (
                EventType.ERROR,
                data(
                    job_id,
                    code=error.get("code", "internal"),
                    message=error.get("message", ""),
                    retryable=False,
                ),
            )
        )
    events.append((EventType.STATUS, data(job_id, status=status, attempt=attempt)))
    return state.emit(job_id, events, terminal=status)


def close_stream(state: State, job: Job) -> str | None:
    """Close a terminal `job`'s stream with its final events from the job's row, once
    (`emit_terminal`): the worker, a cancel, the failure callback and a read that heals all
    use it. Raises AppError when Redis is down."""
    return emit_terminal(
        state,
        job.id,
        job.status,
        result=job.result,
        error=job.error.model_dump() if job.error else None,
        attempt=job.attempts,
    )


class HeldStream(Iterator[str]):
    """An event stream that holds one of its user's stream slots: refreshed as frames go out
    (at least every heartbeat), freed at its end or when the server closes it (the client
    went away)."""

    def __init__(
        self, state: State, user_id: str, stream_id: str, frames: Iterator[str], limit: int
    ) -> None:
        self.state = state
        self.user_id = user_id
        self.stream_id = stream_id
        self.frames = frames
        self.limit = limit
        self.refresh_every = state.stream_slot_ttl_ms / 3000
        self.refreshed = time.monotonic()
        self.closed = False

    def __next__(self) -> str:
        try:
            frame = next(self.frames)
        except BaseException:
            self.close()
            raise
        if time.monotonic() - self.refreshed >= self.refresh_every:
            self.refreshed = time.monotonic()
            try:
                self.state.hold_stream(self.user_id, self.stream_id, self.limit, refresh=True)
            except AppError:
                log.warning("could not refresh an event stream's slot; it lapses by itself")
        return frame

    def close(self) -> None:
        """End the stream and free its slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.frames, "close", None)
            if close is not None:
                close()
        finally:
            try:
                self.state.drop_stream(self.user_id, self.stream_id)
            except AppError:
                log.warning("could not free an event stream's slot; it lapses by itself")
