"""The dev broker's deliveries: one signed HTTP attempt (`http_attempt`), and what its outcome
makes of the message: delivered, retried after QStash's delay, failed into the DLQ, with its
callbacks (`Deliveries`, a `Broker` mixin)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from lib.queue.backoff import backoff_seconds
from lib.queue.signing import sign
from scripts.fakes.dev_broker_model import (
    Message,
    Outcome,
    RuleError,
    body_fields,
    callback_body,
    epoch_ms,
    evaluate_retry_delay,
    message_json,
    new_message_id,
    retry_after_seconds,
    safe_url,
)

log = logging.getLogger("dev_broker")

# Above this, QStash applies its own backoff instead of the Retry-After value.
MAX_RETRY_DELAY_SECONDS = 86400.0


def http_attempt(msg: Message, headers: dict[str, str]) -> Outcome:
    """Send one delivery attempt; never raises: any failure to get a response is an Outcome.

    `msg.timeout` (Upstash-Timeout, at most the plan's response-time limit) bounds the whole
    response, as QStash aborts an attempt that does not return within it: no answer within it,
    or a body still arriving past it, is a failed attempt like a transport error.
    """
    deadline = time.monotonic() + msg.timeout
    try:
        with requests.request(
            msg.method,
            msg.url,
            data=msg.body,
            headers=headers,
            timeout=(min(msg.timeout, 10.0), msg.timeout),
            allow_redirects=False,
            stream=True,
        ) as resp:
            chunks = []
            for chunk in resp.iter_content(65536):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    return Outcome(None, error="Timeout: the response outlived the timeout")
            return Outcome(resp.status_code, dict(resp.headers), b"".join(chunks))
    except Exception as exc:  # noqa: BLE001 - a dead worker can fail in many ways; all are retried
        return Outcome(None, error=f"{type(exc).__name__}: delivery failed")


class Deliveries:
    """The delivery side of `scripts.fakes.dev_broker_core.Broker`: it settles each attempt under
    the broker's lock, in the broker's counters, DLQ and schedule."""

    signing_key: str
    time_scale: float
    _send: Callable[[Message, dict[str, str]], Outcome]
    _cond: threading.Condition
    _stopped: bool
    _counts: dict[str, int]
    _dlq: dict[str, dict[str, Any]]
    _seq: Iterator[int]
    _push: Callable[[str, float], None]
    _enqueue: Callable[[Message], None]
    _flow_release: Callable[[Message], None]

    # -- delivery ---------------------------------------------------------------------------

    def _attempt(self, msg: Message) -> None:
        headers = {
            **msg.headers,
            "User-Agent": "Upstash-QStash",
            "Upstash-Message-Id": msg.message_id,
            "Upstash-Retried": str(msg.retried),
            "Upstash-Signature": sign(self.signing_key, msg.url, msg.body),
        }
        outcome = self._send(msg, headers)
        log.info(
            "deliver msg=%s dest=%s attempt=%d status=%s",
            msg.message_id,
            safe_url(msg.url),
            msg.retried + 1,
            outcome.status if outcome.status is not None else "transport-error",
        )
        with self._cond:
            if not self._stopped:
                self._settle(msg, outcome)

    def _settle(self, msg: Message, outcome: Outcome) -> None:
        self._flow_release(msg)
        status = outcome.status
        if status is not None and msg.callback:
            self._spawn_callback(msg, outcome, None)
        if status is not None and 200 <= status < 300:
            self._counts["delivered"] += 1
            self._finish(msg, "DELIVERED")
            return
        flags = {name.lower(): value for name, value in outcome.headers.items()}
        non_retryable = (
            status == 489 and flags.get("upstash-nonretryable-error", "").lower() == "true"
        )
        if msg.state == "CANCEL_REQUESTED":
            self._finish(msg, "CANCELLED")
        elif non_retryable or msg.retried >= msg.max_retries:
            self._fail(msg, outcome)
        else:
            delay = self._retry_delay(msg, outcome)
            msg.retried += 1
            msg.state = "RETRY"
            self._counts["retried"] += 1
            self._push(msg.message_id, time.time() + delay)

    def _retry_delay(self, msg: Message, outcome: Outcome) -> float:
        given = retry_after_seconds(outcome.headers, time.time())
        if given is not None and given <= MAX_RETRY_DELAY_SECONDS:
            return given
        if msg.retry_delay:
            try:
                millis = evaluate_retry_delay(msg.retry_delay, msg.retried)
                return min(max(millis, 0.0) / 1000.0, MAX_RETRY_DELAY_SECONDS) * self.time_scale
            except RuleError:
                pass
        return backoff_seconds(msg.retried + 1) * self.time_scale

    def _finish(self, msg: Message, state: str) -> None:
        if state == "CANCELLED":
            self._counts["cancelled"] += 1
        msg.state = state
        msg.finished_at = time.time()

    def _fail(self, msg: Message, outcome: Outcome) -> None:
        self._counts["failed"] += 1
        self._finish(msg, "ERROR")
        dlq_id = f"{epoch_ms(time.time())}-{next(self._seq)}"
        entry = message_json(msg)
        entry.update(
            dlqId=dlq_id,
            responseStatus=outcome.status or 0,
            responseHeader={name: [value] for name, value in outcome.headers.items()},
            **body_fields(
                outcome.body or outcome.error.encode(), "responseBody", "responseBodyBase64"
            ),
        )
        self._dlq[dlq_id] = entry
        if msg.failure_callback:
            self._spawn_callback(msg, outcome, dlq_id)

    def _spawn_callback(self, msg: Message, outcome: Outcome, dlq_id: str | None) -> None:
        failure = dlq_id is not None
        url = msg.failure_callback if failure else msg.callback
        assert url is not None
        forwarded = msg.failure_callback_headers if failure else msg.callback_headers
        retries = msg.failure_callback_retries if failure else msg.callback_retries
        self._counts["callbacks"] += 1
        self._enqueue(
            Message(
                message_id=new_message_id(),
                url=url,
                method="POST",
                body=callback_body(msg, outcome, dlq_id),
                headers={**forwarded, "Content-Type": "application/json"},
                max_retries=msg.max_retries if retries is None else retries,
                not_before=time.time(),
                timeout=msg.timeout,
            )
        )
