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
from collections.abc import Iterable, Iterator

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
    viewer = Viewer(state)
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
                viewer.mark([job_id])
                entries = state.wait(job_id, cursor, timeout=min(heartbeat, remaining))
                if not entries:
                    yield ": keep-alive\n\n"
                    continue
            for entry_id, fields in entries:
                event_type, payload = fields.get("t", ""), fields.get("d", "{}")
                yield sse_frame(entry_id, event_type, payload)
                cursor = entry_id
                if is_terminal(event_type, payload):
                    viewer.ended(job_id)
                    return
    finally:
        viewer.close()


class Viewer:
    """An event stream as a viewer of jobs: counted in at its first look at each, its presence
    refreshed every WATCH_REFRESH s, counted out at its end (one round trip) for each job that
    did not end first (lib/state/viewers.py). The job stream and the user stream both use it."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.transport = state.backend.transport
        self.marked: dict[str, float] = {}  # job id -> when this stream last marked it

    def mark(self, job_ids: Iterable[str]) -> None:
        now = time.monotonic()
        for job_id in job_ids:
            if job_id not in self.marked:
                self.state.open_viewer(job_id, self.transport)
            elif now - self.marked[job_id] >= WATCH_REFRESH:
                self.state.watch(job_id, self.transport)
            else:
                continue
            self.marked[job_id] = now

    def ended(self, job_id: str) -> None:
        """The job's terminal event went out: nothing to stop at the stream's end."""
        self.marked.pop(job_id, None)

    def close(self) -> None:
        if not self.marked:
            return
        try:
            self.state.close_viewers(list(self.marked))
        except AppError:
            for job_id in self.marked:
                log.warning(
                    "could not count a viewer out; its watch lapses by itself",
                    extra={"job_id": job_id},
                )
