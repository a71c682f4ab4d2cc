"""Detached mode: tell the jobs waiting for a (tier, model) where they stand, whenever one of its
jobs starts, ends or waits (lib/state/queue_view.py). Two round trips per update: the view
script, then one pipeline of the changed waiters' `queue` events. Best effort: a Redis outage
leaves the last view in place; the next update corrects it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lib.errors import AppError

if TYPE_CHECKING:
    from lib.state import State

log = logging.getLogger("cs.queue")


def notify_queue(
    state: State, tier: str, model: str, *, limit: int, op: str, job_id: str, kind: str = ""
) -> int:
    """Record `op` ("start", "end" or "wait") of `job_id` and write the `queue` events of the
    waiters whose view changed. Returns how many events were written."""
    try:
        update = state.queue_update(tier, model, limit=limit, op=op, job_id=job_id, kind=kind)
        state.emit_queue(update)
    except AppError:
        log.warning("could not update the queue view", extra={"job_id": job_id, "model": model})
        return 0
    return len(update.views)
