"""`make chaos` scenarios that only the reconciler heals (lib/reconcile.py, on its QStash schedule).

- `broker-drop`: the dev broker loses the first publishes it accepts (its drop-publishes switch),
  as a message lost between the broker and the worker. The producer saw them accepted; nothing
  will ever deliver them but the reconciler's re-publish.
- `workers-down`: every worker is SIGKILLed mid-load and stays down for 10 minutes of QStash time
  (DEV_BROKER_TIME_SCALE), past every retry and failure callback, which end in the DLQ. Jobs are
  left running (their attempt died) or queued (never delivered); once the worker is back, the
  reconciler re-publishes them.

Both run with the reconciler's thresholds scaled down (RECONCILE_QUEUED_AFTER_SECONDS) and the
schedule that the dev stack creates at start, as `scripts/deploy` does on the real QStash. No
step of either needs a person: every job must end as it would have without the fault.
"""

from __future__ import annotations

import time

import httpx

from lib.queue.signing import DEV_TOKEN
from scripts.chaos.faults import FaultContext, kill_worker

# In QStash's time; the broker (and so the schedule's ticks) runs DEV_BROKER_TIME_SCALE faster.
WORKERS_DOWN_QSTASH_SECONDS = 600.0
DROPPED_PUBLISHES = 20

# At scale 0.05 a `* * * * *` tick comes every 3 s, and the default backoff (12 s, 2 m 28 s) is
# spent in 8 s: JOB_RETRIES=2 and its failure callback are all used up within the outage.
RECONCILE_ENV = {
    "DEV_BROKER_TIME_SCALE": "0.05",
    "RECONCILE_CRON": "* * * * *",
    "RECONCILE_QUEUED_AFTER_SECONDS": "10",
    "RECONCILE_MAX_HEALS": "8",
}
WORKERS_DOWN_ENV = {**RECONCILE_ENV, "JOB_RETRIES": "2", "JOB_RETRY_DELAY": ""}


def broker_drops(ctx: FaultContext) -> None:
    """Lose the next DROPPED_PUBLISHES publishes, as the load starts."""
    httpx.post(
        f"{ctx.stack.broker_url}/v2/_dev/drop-publishes",
        json={"count": DROPPED_PUBLISHES},
        headers={"Authorization": f"Bearer {DEV_TOKEN}"},
        timeout=5,
    ).raise_for_status()
    ctx.note(f"broker loses the next {DROPPED_PUBLISHES} publishes")


def workers_down(ctx: FaultContext) -> None:
    """SIGKILL every worker at the peak, keep them down for 10 min of QStash time, restart."""
    scale = float(ctx.stack.env.get("DEV_BROKER_TIME_SCALE", "1"))
    seconds = WORKERS_DOWN_QSTASH_SECONDS * scale
    ctx.at_peak()
    running = ctx.load.monitor.counts.get("running", 0)
    kill_worker(ctx.stack)
    ctx.note(f"every worker down {seconds:.0f}s (10 min x {scale:g}; {running} running)")
    time.sleep(seconds)
    ctx.stack.restart("worker")
    ctx.note("worker back")
