"""Detached mode's live queue view: each waiting job's position within its tier and model, the
jobs ahead of it and an ETA from measured service times (lib/state/scripts/queue_view.py
QUEUE_VIEW).

A `State` mixin. The worker calls `queue_update` when a job of a (tier, model) starts, ends or
waits; the script answers the waiters whose view changed, and `emit_queue` writes their `queue`
events in one pipeline, so both SSE endpoints deliver them by their usual read (no new read
path, no polling). Per update: one script (about 7 + 2 x holders + 2 x waiters commands inside,
waiters capped at QUEUE_VIEW_MAX) and one pipeline of one QUEUE_EMIT per changed waiter.

Keys (same hash tag as the model's queue): `queue:{<tier>:<model>}:view`, a hash with
`<job id>:k` (kind), `<job id>:t0` (when a holder started, ms) and `<job id>:q` (the last view,
"<position> <ahead> <eta_s> <at ms>"), expiring with the queue; and `queue:{<tier>:<model>}:svc`,
a hash of kind -> service time (ms, an exponential moving average of recent jobs), no TTL (one
field per kind).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib.state import scripts

if TYPE_CHECKING:
    from lib.state.backend import RedisBackend
    from lib.state.keys import Keys

# Waiters looked at per update: the paid tier's default admission limit (QUEUE_MAX_PAID), so a
# queue within the admission limits is covered whole; further waiters get no event until they
# move up.
QUEUE_VIEW_MAX = 100
# The weight of the newest job in the moving average of service times.
EWMA_WEIGHT = 0.3
# The service time assumed before any job of the model has ended.
DEFAULT_SERVICE_MS = 30_000
# A waiter whose place is the same gets a new `queue` event only when its expected start moved
# by this much: an ETA that merely counts down is not news (GET counts it down itself).
MOVED_MS = 2_000


@dataclass(frozen=True)
class QueueView:
    """Where a waiting job stands: its 1-based place in its tier and model's queue, the jobs
    waiting before it, and the seconds until it is expected to start."""

    position: int
    ahead: int
    eta_s: int

    def public(self) -> dict[str, int]:
        return {"position": self.position, "ahead": self.ahead, "eta_s": self.eta_s}


@dataclass(frozen=True)
class QueueUpdate:
    """One QUEUE_VIEW run: the line's version after it, and the views that changed."""

    version: int
    views: list[tuple[str, QueueView]]


class QueueViewState:
    """The queue-view operations of `lib.state.State`."""

    backend: RedisBackend
    keys: Keys
    lease_ttl_ms: int
    events_ttl: int
    publish: str

    def _view_keys(self, tier: str, model: str) -> list[str]:
        k = self.keys
        return [
            k.slot_holders(tier, model),
            k.model_queue(tier, model),
            k.model_queue_view(tier, model),
            k.service_times(tier, model),
        ]

    def queue_update(
        self,
        tier: str,
        model: str,
        *,
        limit: int,
        op: str = "",
        job_id: str = "",
        kind: str = "",
    ) -> QueueUpdate:
        """Record that `job_id` (of `kind`) started, ended or waits (`op`), and return the
        waiters of `tier` and `model` whose view changed, head first. Raises AppError
        (unavailable) when Redis is down."""
        flat = self.backend.run(
            scripts.QUEUE_VIEW,
            self._view_keys(tier, model),
            [
                int(time.time() * 1000),
                limit,
                op,
                job_id,
                kind,
                DEFAULT_SERVICE_MS,
                QUEUE_VIEW_MAX,
                self._view_ttl_ms(),
                repr(EWMA_WEIGHT),
                MOVED_MS,
            ],
        )
        flat = list(flat or [0])
        views = [
            (str(flat[i]), QueueView(int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3])))
            for i in range(1, len(flat) - 3, 4)
        ]
        return QueueUpdate(int(flat[0]), views)

    def _view_ttl_ms(self) -> int:
        return max(2 * self.lease_ttl_ms, 600_000)

    def emit_queue(self, update: QueueUpdate) -> None:
        """Write each changed waiter's `queue` event to its own stream (and wake its readers),
        one pipeline of QUEUE_EMIT. A closed stream (the job ended or was cancelled), or one
        that already has a later run's view, takes nothing."""
        if not update.views:
            return
        publish = int(self.publish != "never")
        now = round(time.time(), 3)
        calls: list[tuple[Any, list[str], list[str | int]]] = []
        for job_id, view in update.views:
            payload = {**view.public(), "job_id": job_id, "ts": now}
            keys = [
                self.keys.events(job_id),
                self.keys.done(job_id),
                self.keys.notify(job_id),
                self.keys.owner(job_id),
                self.keys.queue_version(job_id),
            ]
            data = json.dumps(payload, separators=(",", ":"))
            args: list[str | int] = [
                update.version,
                self._view_ttl_ms(),
                self.events_ttl,
                publish,
                data,
            ]
            calls.append((scripts.QUEUE_EMIT, keys, args))
        self.backend.run_many(calls)

    def queue_view(self, job_id: str, tier: str, model: str) -> QueueView | None:
        """The job's last view while it waits (its ETA counted down since), else None. One
        command."""
        raw = self.backend.command("HGET", self.keys.model_queue_view(tier, model), f"{job_id}:q")
        if not raw:
            return None
        position, ahead, eta_s, at_ms = (int(x) for x in str(raw).split())
        if position <= 0:
            return None
        left = eta_s - (time.time() * 1000 - at_ms) / 1000
        return QueueView(position, ahead, max(0, math.ceil(left)))

    def service_times(self, tier: str, model: str) -> dict[str, int]:
        """The moving averages of service time (ms) of `tier` and `model`, by kind."""
        from lib.state.backend import pairs

        raw = self.backend.command("HGETALL", self.keys.service_times(tier, model)) or {}
        items = raw.items() if isinstance(raw, dict) else pairs(list(raw)).items()
        return {str(k): int(v) for k, v in items}
