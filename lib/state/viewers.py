"""Who watches a job's events, for the worker's flush policy: a `State` mixin.

Keys: `job:{id}:watch`, the transport of a live viewer ("tcp" or "rest"), which the worker reads
(its lease scripts return it, and the watch channel announces changes); `job:{id}:viewers`, how
many event streams watch the job. A stream opens with `open_viewer`, refreshes with `watch`
every WATCH_REFRESH s, and, when it ends before the job does, `close_viewers`. The last viewer out
deletes the watch key and says so on the watch channel, so the worker stops flushing at once
(a departed viewer used to keep the job flushing, about 7 XADDs a second, until the key lapsed
up to 45 s later). A stream whose function died never leaves: its count stays, and the watch
key lapses WATCH_TTL_MS after the last refresh of any viewer, as before.

The watch channel's messages: "<job id> <transport>" (a new viewer), "<job id> left" (the last
viewer left) and "<job id> closed:<status>" (a cancel closed the stream).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lib.state import scripts
from lib.state.results import CLOSED_PREFIX, LEFT, Signal

if TYPE_CHECKING:
    from lib.state.backend import RedisBackend
    from lib.state.keys import Keys

# How long a live SSE reader's presence lasts after its last refresh; readers refresh it every
# WATCH_REFRESH seconds, the slot's cadence, so at least every 15 + SSE_HEARTBEAT_SECONDS (<= 15)
# = 30 s (a blocking read returns at least every heartbeat). The TTL is not longer on purpose: a
# viewer whose function died keeps its job flushing until the key lapses (and the worker's next
# heartbeat), about 7 XADDs a second, far more than the one SET per refresh a longer TTL saves.
WATCH_TTL_MS = 45_000


class ViewersState:
    """The viewer operations of `lib.state.State`."""

    backend: RedisBackend
    keys: Keys
    stream_life_ms: int

    def open_viewer(self, job_id: str, transport: str) -> bool:
        """A stream starts watching the job: its presence for WATCH_TTL_MS and one more viewer
        (counted for the stream's longest life). A new viewer (the job had none) is announced
        on the watch channel, so the worker running the job starts streaming at once rather
        than at its next heartbeat. Returns True when new. One script (4 commands, 5 when new).
        """
        new = self.backend.run(
            scripts.OPEN_VIEWER,
            [self.keys.watch(job_id), self.keys.viewers(job_id)],
            [
                transport,
                WATCH_TTL_MS,
                self.stream_life_ms,
                self.keys.watch_channel(),
                f"{job_id} {transport}",
            ],
        )
        return bool(new)

    def watch(self, job_id: str, transport: str) -> bool:
        """Refresh a stream's presence for WATCH_TTL_MS. When the key had lapsed, the viewer is
        announced again, as new. Returns True then. One command, two when announced."""
        before = self.backend.command(
            "SET", self.keys.watch(job_id), transport, "PX", WATCH_TTL_MS, "GET"
        )
        if before is None:
            self.backend.command("PUBLISH", self.keys.watch_channel(), f"{job_id} {transport}")
        return before is None

    def close_viewers(self, job_ids: list[str]) -> None:
        """Streams that watched these jobs end before the jobs did: one viewer less for each,
        and the last one out of a job ends its watch at once (announced). One round trip."""
        if not job_ids:
            return
        channel = self.keys.watch_channel()
        self.backend.run_many(
            [
                (
                    scripts.LEAVE_VIEWER,
                    [self.keys.watch(job_id), self.keys.viewers(job_id)],
                    [channel, f"{job_id} {LEFT}"],
                )
                for job_id in job_ids
            ]
        )

    def announce_closed(self, job_id: str, status: str) -> None:
        """Tell the worker running the job, at once, that its stream was closed (a cancel):
        PUBLISHed on the watch channel every worker listens to, so the attempt stops within
        moments instead of at its next lease heartbeat. One command."""
        self.backend.command(
            "PUBLISH", self.keys.watch_channel(), f"{job_id} {CLOSED_PREFIX}{status}"
        )

    def watchers(self, stop: threading.Event) -> Iterator[Signal]:
        """Each message of the watch channel as a `Signal`, until `stop`: a new viewer
        (`watch` is its transport), the last viewer gone (`watch` and `done` None), a closing
        (`done` is the status)."""
        for message in self.backend.listen(self.keys.watch_channel(), stop):
            job_id, _, value = message.partition(" ")
            if value.startswith(CLOSED_PREFIX):
                yield Signal(job_id, None, value.removeprefix(CLOSED_PREFIX))
            elif value == LEFT:
                yield Signal(job_id, None, None)
            else:
                yield Signal(job_id, value or "tcp", None)
