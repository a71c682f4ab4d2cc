"""The dev broker keeps QStash's account rules: callback retries and the plan's limits.

Each rule is checked against what upstash/docs documents (cited in scripts/fakes/dev_broker.py
and lib/queue/plans.py), through the official qstash SDK, with the harness in fixtures/fakes.py and
helpers/broker.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import requests
from helpers.broker import AUTH
from helpers.net import wait_for
from qstash.errors import QStashError

from lib.queue.plans import Plan

if TYPE_CHECKING:
    from helpers.broker import Destination, RunningBroker


ALWAYS_DOWN = [(500, {}, "down")] * 10


def test_a_failure_callback_gets_the_messages_own_retry_count_by_default(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("doomed", *ALWAYS_DOWN)
    dest.script("failed", *ALWAYS_DOWN)
    broker.client.message.publish(
        url=f"{dest.url}/doomed", body="b", retries=1, failure_callback=f"{dest.url}/failed"
    )

    wait_for(lambda: len(broker.client.dlq.list().messages) == 2, what="both in the DLQ")
    assert len(dest.to("doomed")) == 2
    assert [d.headers["Upstash-Retried"] for d in dest.to("failed")] == ["0", "1"]


def test_upstash_failure_callback_retries_sets_the_callbacks_own_retry_count(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("doomed", *ALWAYS_DOWN)
    dest.script("failed", *ALWAYS_DOWN)
    broker.client.message.publish(
        url=f"{dest.url}/doomed",
        body="b",
        retries=0,
        failure_callback=f"{dest.url}/failed",
        failure_callback_headers={"Upstash-Failure-Callback-Retries": "2"},
    )

    wait_for(lambda: len(broker.client.dlq.list().messages) == 2, what="both in the DLQ")
    assert len(dest.to("doomed")) == 1
    assert [d.headers["Upstash-Retried"] for d in dest.to("failed")] == ["0", "1", "2"]
    assert not any("Retries" in name for d in dest.to("failed") for name in d.headers)


def test_a_publish_asking_for_more_retries_than_the_plan_allows_is_refused(
    make_broker: Callable[..., RunningBroker], dest: Destination
) -> None:
    free = make_broker("free")
    target = f"{free.url}/v2/publish/{dest.url}/x"

    for header in ("Upstash-Retries", "Upstash-Failure-Callback-Retries"):
        resp = requests.post(target, data="b", headers={**AUTH, header: "4"}, timeout=5)
        assert resp.status_code == 400, header
        assert "maximum of 3" in resp.json()["error"]
    with pytest.raises(QStashError, match="400"):
        free.client.message.publish(url=f"{dest.url}/x", body="b", retries=4)
    assert free.stats()["published"] == 0

    free.client.message.publish(url=f"{dest.url}/x", body="b", retries=3)
    make_broker("payg").client.message.publish(url=f"{dest.url}/x", body="b", retries=5)
    wait_for(lambda: len(dest.to("x")) == 2, what="both allowed messages")


def test_the_plan_caps_deliveries_in_flight_across_every_flow_control_key(
    make_broker: Callable[..., RunningBroker], dest: Destination
) -> None:
    free = make_broker("free")
    dest.hold("p", 0.3)
    for n in range(8):
        for key in ("model-a", "model-b"):
            free.client.message.publish(
                url=f"{dest.url}/p", body=f"{key}{n}", flow_control={"key": key, "parallelism": 8}
            )
    for n in range(4):
        free.client.message.publish(url=f"{dest.url}/p", body=f"plain{n}")

    wait_for(lambda: free.stats()["delivered"] == 20, timeout=20, what="all twenty deliveries")
    assert dest.max_in_flight["/p"] == 10
    assert free.stats()["retried"] == 0


def test_a_delivery_running_past_the_plans_response_limit_is_cut_as_a_failed_attempt(
    make_broker: Callable[..., RunningBroker], dest: Destination
) -> None:
    quick = make_broker(Plan("quick", parallelism=10, max_retries=3, max_response_seconds=1.0))
    dest.hold("slow", 30)
    started = time.time()
    message = quick.client.message.publish(
        url=f"{dest.url}/slow",
        body="b",
        retries=1,
        timeout="60s",  # longer than the plan allows: the plan's limit wins
        failure_callback=f"{dest.url}/failed",
    )

    [callback] = wait_for(lambda: dest.to("failed"), what="the failure callback")
    assert callback.json()["status"] == 0 and callback.json()["retried"] == 1
    assert callback.json()["sourceMessageId"] == message.message_id
    assert len(dest.to("slow")) == 2
    assert time.time() - started < 10


def test_a_message_whose_flow_is_full_passes_its_account_slot_to_the_next_in_line(
    make_broker: Callable[..., RunningBroker], dest: Destination
) -> None:
    free = make_broker("free")
    dest.hold("y", 30)
    dest.hold("short", 0.3)
    for n in range(9):
        free.client.message.publish(
            url=f"{dest.url}/y", body=str(n), flow_control={"key": "y", "parallelism": 9}
        )
    wait_for(lambda: dest.in_flight.get("/y") == 9, what="nine held deliveries")
    free.client.message.publish(url=f"{dest.url}/short", body="s")
    wait_for(lambda: dest.in_flight.get("/short") == 1, what="the account to be full")
    # Both wait for an account slot; when `short` ends, `y` gets it first but its flow is full.
    free.client.message.publish(
        url=f"{dest.url}/y", body="9", flow_control={"key": "y", "parallelism": 9}
    )
    free.client.message.publish(url=f"{dest.url}/z", body="z")

    wait_for(lambda: dest.to("z"), timeout=10, what="the message behind the blocked one")
    assert dest.in_flight["/y"] == 9 and len(dest.to("y")) == 9
