"""The dev broker, driven through the official qstash SDK against a real recording destination:
delivery, retries, the DLQ and the failure callback.

The harness (broker, destination, signature checks) is in fixtures/fakes.py and helpers/broker.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from helpers.broker import b64decode
from helpers.net import wait_for
from qstash.errors import QStashError

from scripts.fakes.dev_broker_model import RuleError, evaluate_retry_delay, parse_duration

if TYPE_CHECKING:
    from helpers.broker import Destination, RunningBroker


def test_a_published_message_is_delivered_once_with_its_body_headers_and_a_valid_signature(
    broker: RunningBroker, dest: Destination
) -> None:
    url = f"{dest.url}/execute?job=j1&tier=free"
    res = broker.client.message.publish(
        url=url,
        body='{"job_id": "j1"}',
        content_type="application/json",
        headers={"X-Job-Id": "j1"},
    )

    [got] = wait_for(lambda: dest.to("execute"), what="the delivery")
    assert got.method == "POST"
    assert res.deduplicated is False and res.message_id.startswith("msg_")
    assert got.url == url
    assert got.body == b'{"job_id": "j1"}'
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Job-Id"] == "j1"
    assert got.headers["Upstash-Message-Id"] == res.message_id
    assert got.headers["Upstash-Retried"] == "0"
    assert not any(name.lower().startswith("upstash-forward") for name in got.headers)
    wait_for(lambda: broker.state(res.message_id) == "DELIVERED", what="DELIVERED state")
    assert broker.stats() == {
        "published": 1,
        "deduplicated": 0,
        "deliveries": 1,
        "delivered": 1,
        "retried": 0,
        "failed": 0,
        "callbacks": 0,
        "cancelled": 0,
    }


def test_upstash_method_picks_the_http_method_of_the_delivery(
    broker: RunningBroker, dest: Destination
) -> None:
    broker.client.message.publish(url=f"{dest.url}/put", body="x", method="PUT")

    [got] = wait_for(lambda: dest.to("put"), what="the delivery")
    assert got.method == "PUT" and got.body == b"x"


def test_a_failing_destination_is_retried_with_upstash_retried_counting_up(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("flaky", (500, {}, "down"), (503, {}, "down"))
    res = broker.client.message.publish(url=f"{dest.url}/flaky", body="b", retries=3)

    wait_for(lambda: broker.stats()["delivered"] == 1, what="delivery after two retries")
    attempts = dest.to("flaky")
    assert [d.headers["Upstash-Retried"] for d in attempts] == ["0", "1", "2"]
    assert {d.headers["Upstash-Message-Id"] for d in attempts} == {res.message_id}
    assert broker.stats()["retried"] == 2 and broker.stats()["failed"] == 0


def test_the_retry_delay_expression_spaces_retries_by_its_scaled_value(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("spaced", (500, {}, ""), (500, {}, ""))
    # retried is 0 before the first retry: 200 s then 400 s, i.e. 0.2 s then 0.4 s at this scale.
    broker.client.message.publish(
        url=f"{dest.url}/spaced", body="b", retries=2, retry_delay="200000 * (1 + retried)"
    )

    attempts = wait_for(lambda: len(dest.to("spaced")) == 3 and dest.to("spaced"), what="3 tries")
    assert attempts[1].at - attempts[0].at >= 0.2
    assert attempts[2].at - attempts[1].at >= 0.4


@pytest.mark.parametrize(
    ("expression", "retried", "millis"),
    [
        ("1000", 4, 1000.0),
        ("pow(2, retried) * 1000", 3, 8000.0),
        ("max(1000, pow(2, retried) * 100)", 1, 1000.0),
        ("floor(sqrt(retried)) + ceil(0.2) + round(1.6) + abs(-1) + min(1, 2)", 4, 7.0),
        ("exp(retried) - 1", 0, 0.0),
    ],
)
def test_retry_delay_expressions_use_the_documented_functions(
    expression: str, retried: int, millis: float
) -> None:
    assert evaluate_retry_delay(expression, retried) == millis


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "retried.__class__",
        "open('/etc/passwd')",
        "[1, 2]",
        "lambda: 1",
        "pow(10, 100000)",
        "1 / 0",
        "retried if retried else 1",
    ],
)
def test_a_retry_delay_expression_that_is_not_plain_arithmetic_is_rejected(
    broker: RunningBroker, dest: Destination, expression: str
) -> None:
    with pytest.raises(RuleError):
        evaluate_retry_delay(expression, 0)
    with pytest.raises(QStashError, match="400"):
        broker.client.message.publish(url=f"{dest.url}/x", body="b", retry_delay=expression)
    assert broker.stats()["published"] == 0


def test_durations_follow_the_qstash_format() -> None:
    assert parse_duration("50s") == 50
    assert parse_duration("2m") == 120
    assert parse_duration("1d10h30m") == 86400 + 36000 + 1800
    assert parse_duration("250ms") == 0.25
    assert parse_duration("7") == 7
    for bad in ("", "10x", "-5s", "s10"):
        with pytest.raises(RuleError):
            parse_duration(bad)


def test_exhausted_retries_go_to_the_dlq_and_the_failure_callback_gets_the_source_message(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("doomed", (500, {"X-Why": "db"}, "boom"), (500, {"X-Why": "db"}, "boom"))
    body = '{"job_id": "j2"}'
    res = broker.client.message.publish(
        url=f"{dest.url}/doomed",
        body=body,
        content_type="application/json",
        retries=1,
        failure_callback=f"{dest.url}/failed",
    )

    [callback] = wait_for(lambda: dest.to("failed"), what="the failure callback")
    payload = callback.json()
    assert callback.headers["Content-Type"] == "application/json"
    assert payload["status"] == 500
    assert payload["header"]["X-Why"] == ["db"]
    assert b64decode(payload["body"]) == b"boom"
    assert payload["retried"] == 1 and payload["maxRetries"] == 1
    assert payload["sourceMessageId"] == res.message_id
    assert payload["url"] == f"{dest.url}/doomed" and payload["method"] == "POST"
    assert b64decode(payload["sourceBody"]) == body.encode()
    assert payload["sourceHeader"]["Content-Type"] == ["application/json"]
    assert int(payload["createdAt"]) <= int(payload["notBefore"]) + 1

    [entry] = broker.client.dlq.list().messages
    assert entry.dlq_id == payload["dlqId"]
    assert entry.message_id == res.message_id and entry.url == f"{dest.url}/doomed"
    assert entry.body == body and entry.max_retries == 1
    assert entry.response_status == 500 and entry.response_body == "boom"
    assert entry.failure_callback == f"{dest.url}/failed"
    assert broker.client.dlq.get(entry.dlq_id).message_id == res.message_id
    assert broker.state(res.message_id) == "ERROR"
    assert len(dest.to("doomed")) == 2

    again = broker.client.message.publish(url=entry.url, body=entry.body)
    wait_for(lambda: broker.state(again.message_id) == "DELIVERED", what="the republished one")

    broker.client.dlq.delete(entry.dlq_id)
    assert broker.client.dlq.list().messages == []
    with pytest.raises(QStashError, match="404"):
        broker.client.dlq.delete(entry.dlq_id)


def test_a_489_with_upstash_nonretryable_error_fails_at_once_without_retries(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("bad", (489, {"Upstash-NonRetryable-Error": "true"}, "invalid input"))
    res = broker.client.message.publish(
        url=f"{dest.url}/bad", body="b", retries=3, failure_callback=f"{dest.url}/failed"
    )

    [callback] = wait_for(lambda: dest.to("failed"), what="the failure callback")
    assert callback.json()["status"] == 489 and callback.json()["retried"] == 0
    assert callback.json()["sourceMessageId"] == res.message_id
    assert len(dest.to("bad")) == 1
    [entry] = broker.client.dlq.list().messages
    assert entry.response_status == 489 and entry.response_body == "invalid input"
    assert broker.stats()["retried"] == 0 and broker.stats()["failed"] == 1


def test_a_489_without_the_nonretryable_header_is_retried_like_any_error(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("odd", (489, {}, "x"))
    broker.client.message.publish(url=f"{dest.url}/odd", body="b", retries=1)

    wait_for(lambda: broker.stats()["delivered"] == 1, what="the retry")
    assert [d.headers["Upstash-Retried"] for d in dest.to("odd")] == ["0", "1"]


def test_retry_after_from_the_destination_is_honoured_unscaled(
    broker: RunningBroker, dest: Destination
) -> None:
    dest.script("busy", (429, {"Retry-After": "1"}, "later"))
    broker.client.message.publish(url=f"{dest.url}/busy", body="b", retries=2)

    first, second = wait_for(lambda: len(dest.to("busy")) == 2 and dest.to("busy"), what="retry")
    assert second.at - first.at >= 1.0
    assert second.headers["Upstash-Retried"] == "1"
