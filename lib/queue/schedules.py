"""The reconciler's QStash schedule: created once per deployment, idempotently.

`python -m lib.queue.schedules` (run by `scripts/deploy`, and by the dev stack against its dev
broker) lists the account's schedules with the official SDK and creates the reconciler's when it
is missing or differs: `POST /v2/schedules/PRODUCER_URL/api/reconcile` with `Upstash-Cron:
RECONCILE_CRON` and `Upstash-Schedule-Id: cs-reconcile` (qstash-py `client.schedule.create(
destination=..., cron=..., schedule_id=...)`; a create with an existing id replaces that
schedule: https://upstash.com/docs/qstash/sdks/py/examples/schedules).
"""

from __future__ import annotations

import sys
from typing import Any

from lib import config
from lib.config import Settings

SCHEDULE_ID = "cs-reconcile"
# A tick that finds the producer down is retried (QStash's backoff); the next tick comes anyway.
TICK_RETRIES = 2
TICK_TIMEOUT = "60s"  # vercel.json gives api/reconcile.py maxDuration 60


def ensure_reconcile_schedule(settings: Settings, client: Any = None) -> tuple[str, bool]:
    """Make sure the reconciler's schedule exists as configured; return (its id, whether this
    call created or replaced it). Raises ValueError when PRODUCER_URL, QSTASH_TOKEN or
    RECONCILE_CRON is unset,
    and the SDK's QStashError when QStash refuses."""
    if not settings.reconcile_url or not settings.qstash_token:
        raise ValueError("set PRODUCER_URL and QSTASH_TOKEN to schedule the reconciler")
    if not settings.reconcile_cron.strip():
        raise ValueError("RECONCILE_CRON is empty: the reconciler is not scheduled")
    if client is None:
        from qstash import QStash

        client = QStash(settings.qstash_token, base_url=settings.qstash_url)
    for schedule in client.schedule.list():
        if (
            schedule.schedule_id == SCHEDULE_ID
            and schedule.destination == settings.reconcile_url
            and schedule.cron == settings.reconcile_cron
        ):
            return SCHEDULE_ID, False
    created = client.schedule.create(
        destination=settings.reconcile_url,
        cron=settings.reconcile_cron,
        schedule_id=SCHEDULE_ID,
        retries=TICK_RETRIES,
        timeout=TICK_TIMEOUT,
    )
    return str(created), True


def main() -> int:
    """Create the reconciler's schedule from the environment (`.env` too); 1 on a problem."""
    try:
        schedule_id, changed = ensure_reconcile_schedule(config.load())
    except Exception as exc:  # noqa: BLE001 - a one-line message for the operator, no traceback
        print(f"reconcile schedule: {exc}", file=sys.stderr)
        return 1
    print(f"reconcile schedule {schedule_id}: {'created' if changed else 'already in place'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
