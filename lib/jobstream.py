"""One job's event stream (`GET /api/jobs/<id>/events`): its SSE frames after a cursor.

It waits for new entries by blocking `XREAD` (TCP) or by subscription (Upstash REST), never by
polling, except in SSE_READ_MODE=poll, the original design the benchmark compares against. While
it reads, the job is marked as watched (lib/state/viewers.py), so the worker flushes its output
promptly; a stream that ends before the job did (its client went away, or it reached
`max_seconds` and the client reconnects) says so, and the worker stops flushing at once when
nobody else watches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from lib.errors import AppError
from lib.events import is_terminal, sse_frame
from lib.state import WATCH_REFRESH, State

log = logging.getLogger("cs.producer")

# SSE_READ_MODE=poll (the benchmark's baseline): the original design's XRANGE interval, doubled
# while the stream is idle up to POLL_MAX, back to POLL_FIRST when an entry arrives.
POLL_FIRST = 0.4
POLL_MAX = 8.0


def frames(
    state: State,
    job_id: str,
    after: str | None,
    *,
    max_seconds: float,
    heartbeat: float,
    poll: bool = False,
) -> Iterator[str]:
    """SSE frames of the job's events after `after` ("0": from the first), ending after the
    terminal status or at `max_seconds`, with a keep-alive comment at least every `heartbeat`
    seconds while nothing happens."""
    deadline = time.monotonic() + max_seconds
    cursor = after or "0"
    viewer = _Viewer(state, job_id)
    idle = POLL_FIRST
    spoke = time.monotonic()
    try:
        yield "retry: 1000\n\n"
        while (remaining := deadline - time.monotonic()) > 0:
            if poll:
                entries = state.read(job_id, cursor)
                if not entries:
                    time.sleep(min(idle, remaining))
                    idle = min(idle * 2, POLL_MAX)
                    if time.monotonic() - spoke >= heartbeat:
                        spoke = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                idle = POLL_FIRST
                spoke = time.monotonic()
            else:
                viewer.mark()
                entries = state.wait(job_id, cursor, timeout=min(heartbeat, remaining))
                if not entries:
                    yield ": keep-alive\n\n"
                    continue
            for entry_id, fields in entries:
                event_type, payload = fields.get("t", ""), fields.get("d", "{}")
                yield sse_frame(entry_id, event_type, payload)
                cursor = entry_id
                if is_terminal(event_type, payload):
                    viewer.ended = True
                    return
    finally:
        viewer.close()


class _Viewer:
    """This stream as a viewer of the job: counted in at its first read, its presence refreshed
    every WATCH_REFRESH s, counted out at its end unless the job ended first."""

    def __init__(self, state: State, job_id: str) -> None:
        self.state = state
        self.job_id = job_id
        self.transport = state.backend.transport
        self.marked: float | None = None
        self.ended = False  # the job's terminal event went out: nothing to stop

    def mark(self) -> None:
        now = time.monotonic()
        if self.marked is None:
            self.state.open_viewer(self.job_id, self.transport)
        elif now - self.marked >= WATCH_REFRESH:
            self.state.watch(self.job_id, self.transport)
        else:
            return
        self.marked = now

    def close(self) -> None:
        if self.marked is None or self.ended:
            return
        try:
            self.state.close_viewers([self.job_id])
        except AppError:
            log.warning(
                "could not count a viewer out; its watch lapses by itself",
                extra={"job_id": self.job_id},
            )
