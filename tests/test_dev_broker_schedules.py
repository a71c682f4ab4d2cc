"""The dev broker's QStash Schedules, driven through the official SDK (`client.schedule`).

The API and its fields are QStash's (https://upstash.com/docs/qstash/api/schedules/create):
scripts/fakes/dev_broker_schedules.py. Every tick is a message of its own, delivered and signed like
any other; the `dest` fixture fails a test whose deliveries did not verify.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import requests
from helpers.net import free_port, wait_for
from qstash.errors import QStashError

from lib.queue.signing import DEV_TOKEN

if TYPE_CHECKING:
    from helpers.broker import Destination, RunningBroker


AUTH = {"Authorization": f"Bearer {DEV_TOKEN}"}


def test_a_schedule_created_through_the_sdk_delivers_signed_ticks_with_fresh_ids(
    broker: RunningBroker, dest: Destination
) -> None:
    schedule_id = broker.client.schedule.create(
        destination=f"{dest.url}/tick", cron="* * * * *", retries=0
    )

    ticks = wait_for(lambda: dest.to("tick")[:3] if len(dest.to("tick")) >= 3 else None)
    assert all(t.headers["Upstash-Schedule-Id"] == schedule_id for t in ticks)
    assert len({t.headers["Upstash-Message-Id"] for t in ticks}) == 3
    # A fresh signature (and so a fresh jti) per delivery: none is a replay of another.
    assert len({t.headers["Upstash-Signature"] for t in ticks}) == 3
    assert all(t.headers["Upstash-Retried"] == "0" for t in ticks)


def test_schedules_are_listed_read_and_deleted_as_the_sdk_parses_them(
    broker: RunningBroker, dest: Destination
) -> None:
    first = broker.client.schedule.create(destination=f"{dest.url}/a", cron="0 * * * *")
    second = broker.client.schedule.create(
        destination=f"{dest.url}/b", cron="*/5 * * * *", schedule_id="reconcile"
    )

    assert second == "reconcile"
    listed = {s.schedule_id: s for s in broker.client.schedule.list()}
    assert set(listed) == {first, "reconcile"}
    got = broker.client.schedule.get("reconcile")
    assert (got.destination, got.cron, got.method) == (f"{dest.url}/b", "*/5 * * * *", "POST")
    broker.client.schedule.delete(first)
    assert [s.schedule_id for s in broker.client.schedule.list()] == ["reconcile"]
    with pytest.raises(QStashError):
        broker.client.schedule.get(first)


def test_creating_with_an_existing_schedule_id_replaces_that_schedule(
    broker: RunningBroker, dest: Destination
) -> None:
    broker.client.schedule.create(destination=f"{dest.url}/a", cron="0 * * * *", schedule_id="s")
    broker.client.schedule.create(destination=f"{dest.url}/b", cron="0 0 * * *", schedule_id="s")

    [only] = broker.client.schedule.list()
    assert (only.destination, only.cron) == (f"{dest.url}/b", "0 0 * * *")


def test_a_deleted_schedule_ticks_no_more(broker: RunningBroker, dest: Destination) -> None:
    schedule_id = broker.client.schedule.create(destination=f"{dest.url}/t", cron="* * * * *")
    wait_for(lambda: dest.to("t"), what="a first tick")

    broker.client.schedule.delete(schedule_id)
    seen = len(dest.to("t")) + 1  # a tick already published may still be delivered
    # A live schedule on the same cron is the clock: five of its ticks, none of the deleted one.
    broker.client.schedule.create(destination=f"{dest.url}/clock", cron="* * * * *")
    wait_for(lambda: len(dest.to("clock")) >= 5, what="five ticks of the live schedule")
    assert len(dest.to("t")) <= seen


def test_a_tick_to_a_down_endpoint_is_retried_like_a_message_then_dead_lettered(
    broker: RunningBroker,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/reconcile"
    broker.client.schedule.create(destination=closed, cron="* * * * *", retries=2)

    entries = wait_for(lambda: broker.client.dlq.list(filter={"url": closed}).messages)
    assert entries[0].response_status == 0
    assert broker.stats()["retried"] >= 2


def test_a_schedule_without_a_valid_cron_is_refused(broker: RunningBroker) -> None:
    for headers in ({}, {"Upstash-Cron": "every minute"}):
        resp = requests.post(
            f"{broker.url}/v2/schedules/http://127.0.0.1:1/x",
            headers={**AUTH, **headers},
            timeout=5,
        )
        assert resp.status_code == 400 and "Upstash-Cron" in resp.json()["error"]


def test_the_drop_publishes_switch_loses_exactly_that_many_messages(
    broker: RunningBroker, dest: Destination
) -> None:
    requests.post(
        f"{broker.url}/v2/_dev/drop-publishes", json={"count": 1}, headers=AUTH, timeout=5
    ).raise_for_status()

    lost = broker.client.message.publish(url=f"{dest.url}/lost", body="1")
    kept = broker.client.message.publish(url=f"{dest.url}/kept", body="2")

    wait_for(lambda: dest.to("kept"), what="the second message")
    assert lost.message_id != kept.message_id
    assert dest.to("lost") == []
