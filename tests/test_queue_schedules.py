"""The reconciler's schedule (lib/queue/schedules.py) against the dev broker, as `scripts/deploy`
and the dev stack create it: list, then create when missing or different."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from lib.config import Settings
from lib.queue.schedules import SCHEDULE_ID, ensure_reconcile_schedule
from lib.queue.signing import DEV_TOKEN

if TYPE_CHECKING:
    from helpers.broker import RunningBroker


def settings(broker: RunningBroker, **overrides: str) -> Settings:
    values = {
        "qstash_url": broker.url,
        "qstash_token": DEV_TOKEN,
        "producer_url": "https://producer.example.test",
        "reconcile_cron": "*/2 * * * *",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_the_schedule_is_created_once_then_left_in_place(broker: RunningBroker) -> None:
    assert ensure_reconcile_schedule(settings(broker)) == (SCHEDULE_ID, True)
    assert ensure_reconcile_schedule(settings(broker)) == (SCHEDULE_ID, False)

    [schedule] = broker.client.schedule.list()
    assert schedule.destination == "https://producer.example.test/api/reconcile"
    assert schedule.cron == "*/2 * * * *"


def test_a_changed_cron_replaces_the_schedule_rather_than_adding_one(
    broker: RunningBroker,
) -> None:
    ensure_reconcile_schedule(settings(broker))

    assert ensure_reconcile_schedule(settings(broker, reconcile_cron="0 * * * *"))[1] is True
    [schedule] = broker.client.schedule.list()
    assert schedule.cron == "0 * * * *"


def test_without_a_producer_url_nothing_is_scheduled(broker: RunningBroker) -> None:
    with pytest.raises(ValueError, match="PRODUCER_URL"):
        ensure_reconcile_schedule(settings(broker, producer_url=""))
    assert broker.client.schedule.list() == []
