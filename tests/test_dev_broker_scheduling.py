"""The dev broker, driven through the official qstash SDK against a real recording destination:
deduplication, delays, flow control, cancels, auth, broken destinations, callbacks, and the
broker's own lifecycle.

The harness (broker, destination, signature checks) is in fixtures/fakes.py and helpers/broker.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from helpers.broker import AUTH, SCALE, b64decode
from helpers.net import free_port, wait_for
from qstash import QStash
from qstash.errors import QStashError

from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN
from scripts.fakes.dev_broker import create_app

if TYPE_CHECKING:
    from helpers.broker import Destination, RunningBroker


ROOT = Path(__file__).resolve().parent.parent


def test_a_deduplication_id_accepts_the_duplicate_but_delivers_once(
    broker: RunningBroker, dest: Destination
) -> None:
    first = broker.client.message.publish(url=f"{dest.url}/d", body="1", deduplication_id="job-1")
    second = broker.client.message.publish(url=f"{dest.url}/d", body="2", deduplication_id="job-1")
    other = broker.client.message.publish(url=f"{dest.url}/d", body="3", deduplication_id="job-2")

    assert second.message_id == first.message_id and second.deduplicated is True
    assert other.message_id != first.message_id and other.deduplicated is False
    wait_for(lambda: broker.stats()["delivered"] == 2, what="both distinct messages")
    assert sorted(d.body for d in dest.to("d")) == [b"1", b"3"]
    assert broker.stats()["published"] == 2 and broker.stats()["deduplicated"] == 1


def test_content_based_deduplication_compares_destination_body_and_forwarded_headers(
    broker: RunningBroker, dest: Destination
) -> None:
    def publish(path: str, body: str, job: str) -> Any:
        return broker.client.message.publish(
            url=f"{dest.url}/{path}",
            body=body,
            headers={"X-Job-Id": job},
            content_based_deduplication=True,
        )

    first = publish("c", "same", "j1")
    assert publish("c", "same", "j1").deduplicated is True
    assert publish("c", "same", "j1").message_id == first.message_id
    assert publish("c", "other", "j1").deduplicated is False
    assert publish("c", "same", "j2").deduplicated is False
    assert publish("c2", "same", "j1").deduplicated is False
    wait_for(lambda: broker.stats()["delivered"] == 4, what="the four distinct messages")
    assert broker.stats()["deduplicated"] == 2


def test_a_delayed_message_waits_its_scaled_delay_while_undelayed_ones_go_first(
    broker: RunningBroker, dest: Destination
) -> None:
    start = time.time()
    late = broker.client.message.publish(url=f"{dest.url}/late", body="b", delay="1000s")
    pending = broker.client.message.get(late.message_id)
    assert pending.not_before >= int((start + 1.0) * 1000)
    assert broker.state(late.message_id) == "CREATED"
    broker.client.message.publish(url=f"{dest.url}/early", body="a")

    [got] = wait_for(lambda: dest.to("late"), what="the delayed delivery")
    [early] = dest.to("early")
    assert early.at < got.at
    assert got.at >= start + 1000 * SCALE


def test_not_before_holds_delivery_until_that_wall_clock_second(
    broker: RunningBroker, dest: Destination
) -> None:
    not_before = int(time.time()) + 1
    broker.client.message.publish(url=f"{dest.url}/nb", body="b", not_before=not_before)

    [got] = wait_for(lambda: dest.to("nb"), what="the delivery")
    assert got.at >= not_before


def test_flow_control_parallelism_caps_concurrent_deliveries_per_key(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.hold("fc", 0.25)
    for n in range(6):
        broker.client.message.publish(
            url=f"{dest.url}/fc", body=str(n), flow_control={"key": "model-a", "parallelism": 2}
        )

    wait_for(lambda: broker.stats()["delivered"] == 6, what="all six deliveries")
    assert dest.max_in_flight["/fc"] == 2


def test_flow_control_rate_caps_delivery_starts_per_period(
    broker: RunningBroker, dest: Destination
) -> None:
    start = time.time()
    for n in range(4):
        broker.client.message.publish(
            url=f"{dest.url}/rate", body=str(n), flow_control={"key": "k", "rate": 2, "period": 1}
        )

    wait_for(lambda: len(dest.to("rate")) == 4, what="all four deliveries")
    arrivals = sorted(d.at for d in dest.to("rate"))
    assert arrivals[2] >= start + 1.0


def test_a_cancelled_message_is_never_delivered(broker: RunningBroker, dest: Destination) -> None:
    doomed = broker.client.message.publish(url=f"{dest.url}/never", body="x", delay="500s")
    broker.client.message.cancel(doomed.message_id)
    assert broker.state(doomed.message_id) == "CANCELLED"
    with pytest.raises(QStashError, match="404"):
        broker.client.message.cancel(doomed.message_id)
    # Due after the cancelled one would have been: once it arrives, the other one had its turn.
    broker.client.message.publish(url=f"{dest.url}/later", body="y", delay="600s")

    wait_for(lambda: dest.to("later"), what="the later message")
    assert dest.to("never") == []
    assert broker.stats()["deliveries"] == 1
    assert broker.stats()["cancelled"] == 1  # settled: `make chaos` counts it as not pending


def test_signing_keys_are_served_in_the_shape_the_sdk_parses(broker: RunningBroker) -> None:
    keys = broker.client.signing_key.get()
    assert (keys.current, keys.next) == (DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)


def test_requests_without_the_bearer_token_are_refused_with_401(broker: RunningBroker) -> None:
    target = f"{broker.url}/v2/publish/http://127.0.0.1:9/x"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": DEV_TOKEN}):
        resp = requests.post(target, data="b", headers=headers, timeout=5)
        assert resp.status_code == 401
        assert isinstance(resp.json()["error"], str)
    assert requests.get(f"{broker.url}/v2/dlq", timeout=5).status_code == 401
    with pytest.raises(QStashError, match="401"):
        QStash("not-the-token", base_url=broker.url).signing_key.get()
    assert broker.stats()["published"] == 0


def test_an_unreachable_destination_is_retried_then_dead_lettered(
    broker: RunningBroker, dest: Destination
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/execute"
    res = broker.client.message.publish(
        url=closed, body="b", retries=2, failure_callback=f"{dest.url}/failed"
    )

    [callback] = wait_for(lambda: dest.to("failed"), what="the failure callback")
    assert callback.json()["status"] == 0 and callback.json()["retried"] == 2
    assert callback.json()["sourceMessageId"] == res.message_id
    [entry] = broker.client.dlq.list(filter={"url": closed}).messages
    assert entry.response_status == 0
    assert broker.stats()["retried"] == 2


def test_a_connection_dropped_mid_request_is_retried(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.reset("killed", 1)
    broker.client.message.publish(url=f"{dest.url}/killed", body="b", retries=3)

    wait_for(lambda: broker.stats()["delivered"] == 1, what="the redelivery")
    assert [d.headers["Upstash-Retried"] for d in dest.to("killed")] == ["0", "1"]


def test_a_delivery_that_outlives_upstash_timeout_is_a_failed_attempt(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.hold("slow", 10)
    started = time.time()
    broker.client.message.publish(
        url=f"{dest.url}/slow", body="b", retries=0, timeout="1s", failure_callback=f"{dest.url}/f"
    )

    wait_for(lambda: dest.to("f"), what="the failure callback")
    assert time.time() - started < 5
    assert dest.to("f")[0].json()["status"] == 0


def test_a_success_callback_carries_the_response_and_is_signed(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("work", (200, {"X-Answer": "42"}, "done"))
    res = broker.client.message.publish(
        url=f"{dest.url}/work", body="b", callback=f"{dest.url}/cb", headers={"X-Job-Id": "j9"}
    )

    [callback] = wait_for(lambda: dest.to("cb"), what="the callback")
    payload = callback.json()
    assert payload["status"] == 200 and b64decode(payload["body"]) == b"done"
    assert payload["header"]["X-Answer"] == ["42"]
    assert payload["sourceMessageId"] == res.message_id and payload["retried"] == 0
    assert payload["sourceHeader"]["X-Job-Id"] == ["j9"]
    assert "dlqId" not in payload
    wait_for(lambda: broker.stats()["delivered"] == 2, what="the callback to be settled")
    assert broker.stats()["callbacks"] == 1


def test_three_hundred_deliveries_can_be_held_open_at_once(
    make_broker: Callable[..., RunningBroker], dest: Destination
) -> None:
    broker = make_broker("fixed-10m")  # parallelism 1000: pay-as-you-go would cap it at 100
    dest.hold("long", 30)
    for n in range(300):
        broker.client.message.publish(url=f"{dest.url}/long", body=str(n))

    wait_for(lambda: dest.in_flight.get("/long") == 300, timeout=20, what="300 open deliveries")
    dest.release.set()
    wait_for(lambda: broker.stats()["delivered"] == 300, timeout=20, what="300 deliveries")
    assert broker.stats()["retried"] == 0


def test_stopping_the_broker_ends_its_scheduler_thread() -> None:
    app = create_app(time_scale=SCALE)
    scheduler = app.broker
    assert scheduler.running
    app.broker.stop()
    assert not scheduler.running
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("dev-broker"))


def test_the_cli_reads_its_environment_lets_the_flag_win_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    env = {
        **os.environ,
        "QSTASH_TOKEN": "custom-token",
        "DEV_BROKER_TIME_SCALE": "0.5",
        "QSTASH_PLAN": "free",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.fakes.dev_broker",
            "--port",
            str(port),
            "--time-scale",
            "0.25",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=15, what="the CLI broker")
        custom = {"Authorization": "Bearer custom-token"}
        assert requests.get(f"{base}/v2/keys", headers=custom, timeout=5).status_code == 200
        assert requests.get(f"{base}/v2/keys", headers=AUTH, timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "time_scale=0.25 plan=free" in stderr
    assert "custom-token" not in stderr
