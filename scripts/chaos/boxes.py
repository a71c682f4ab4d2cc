"""The `make chaos` scenario of scale-out (lib/boxes.py): two worker boxes, one SIGKILLed for good.

`box-kill`: the stack runs two worker boxes (WORKERS=2, WORKER_URLS lists both); at the peak of
the load the first box's whole process group is SIGKILLed and never comes back. Its
announcement lapses within 3 x BOX_HEARTBEAT_SECONDS, so new submits go to the second box; the
jobs it ran lose their leases and those still queued for it at the broker are never delivered:
the reconciler re-publishes both kinds to the live box. Every job must end as it would have
without the fault, on the second box, with no human action.

The broker keeps retrying the messages addressed to the dead box, and their failure callbacks
(addressed to that box too, so they can never fail a job that the other box now runs), on
QStash's backoff for hours. Once every job has ended, `abandon_dead_box` cancels what the broker
still holds (QStash's bulk cancel, `DELETE /v2/messages`: https://upstash.com/docs/qstash/api/
messages/bulk-cancel), as an operator who retired the box would; the invariants are checked
after it.
"""

from __future__ import annotations

import httpx

from lib.queue.signing import DEV_TOKEN
from scripts.chaos.faults import FaultContext, kill_worker
from scripts.chaos.reconcile import RECONCILE_ENV

# Short jobs (50 tokens/s: 4-10 s each), short leases and beats, and the reconciler every 3 s,
# so the scenario fits in its budget of 60 s.
BOX_KILL_ENV = {
    **RECONCILE_ENV,
    "WORKERS": "2",
    "WEB_CONCURRENCY": "1",
    "BOX_HEARTBEAT_SECONDS": "1",
    "LEASE_TTL_SECONDS": "3",
    "RECONCILE_QUEUED_AFTER_SECONDS": "5",
    "OFFLINE_LLM_TOKENS_PER_SECOND": "50",
}


def kill_one_box(ctx: FaultContext) -> None:
    """SIGKILL the first of the two boxes at the peak; it stays down."""
    ctx.at_peak(after=1.0, running=120)
    running = ctx.load.monitor.counts.get("running", 0)
    kill_worker(ctx.stack)
    ctx.note(f"box 1 of 2 SIGKILLed for good ({running} running)")


def abandon_dead_box(ctx: FaultContext) -> None:
    """Every job has ended: cancel the retries the broker still holds for the dead box."""
    answer = httpx.request(
        "DELETE",
        f"{ctx.stack.broker_url}/v2/messages",
        json={},
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=10,
    )
    answer.raise_for_status()
    ctx.note(f"{answer.json()['cancelled']} messages for the dead box cancelled")
