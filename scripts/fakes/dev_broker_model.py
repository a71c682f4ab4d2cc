"""The dev broker's messages and QStash's rules about them, as pure functions.

Types and JSON formats: a message as `GET /v2/messages/<id>` and the DLQ show it
(https://upstash.com/docs/qstash/api-reference/dlq/list-dlq-messages), and the callback and
failure-callback bodies (https://upstash.com/docs/qstash/features/callbacks). Rules: durations
(`10s`, `1d10h30m`), flow-control values, the `Upstash-Retry-Delay` expression language, the default
backoff and `Retry-After` (https://upstash.com/docs/qstash/features/retry).
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lib.queue.backoff import RetryDelayError
from lib.queue.backoff import evaluate_retry_delay as _evaluate_retry_delay


class RuleError(ValueError):
    """A header value does not follow the QStash format; the message is the reason."""


@dataclass
class FlowControl:
    """A message's `Upstash-Flow-Control-*` settings; `None` limits mean no limit."""

    key: str
    parallelism: int | None = None
    rate: int | None = None
    period: float = 1.0


@dataclass
class Message:
    """One QStash message (a publish or a callback) and its delivery state."""

    message_id: str
    url: str
    method: str
    body: bytes
    headers: dict[str, str]
    max_retries: int
    not_before: float
    timeout: float
    created_at: float = field(default_factory=time.time)
    retry_delay: str | None = None
    callback: str | None = None
    failure_callback: str | None = None
    callback_headers: dict[str, str] = field(default_factory=dict)
    failure_callback_headers: dict[str, str] = field(default_factory=dict)
    # None: the callback gets the message's own retry count, as QStash documents.
    callback_retries: int | None = None
    failure_callback_retries: int | None = None
    flow: FlowControl | None = None
    label: str | None = None
    caller_ip: str | None = None
    retried: int = 0
    state: str = "CREATED"
    finished_at: float | None = None


@dataclass
class Outcome:
    """The result of one delivery attempt: a response, or a transport error (`status` None)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""


def new_message_id() -> str:
    """Return a fresh id in QStash's `msg_...` shape."""
    return f"msg_{uuid.uuid4().hex}"


def b64(data: bytes) -> str:
    """Return standard base64 of `data`, as QStash encodes bodies in JSON."""
    return base64.b64encode(data).decode()


def epoch_ms(seconds: float) -> int:
    """Return a unix time in seconds as the integer milliseconds QStash reports."""
    return int(seconds * 1000)


def safe_url(url: str) -> str:
    """Return `url` without its query string, for logs."""
    # Query strings may carry tokens, so logs show scheme, host and path only.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def body_fields(body: bytes, plain: str, encoded: str) -> dict[str, str]:
    """Return `{plain: text}` for a UTF-8 body, else `{encoded: base64}`, as QStash does."""
    try:
        return {plain: body.decode("utf-8")}
    except UnicodeDecodeError:
        return {encoded: b64(body)}


def message_json(msg: Message) -> dict[str, Any]:
    """Return `msg` as the QStash REST API shows a message (`GET /v2/messages/<id>`)."""
    out: dict[str, Any] = {
        "messageId": msg.message_id,
        "url": msg.url,
        "method": msg.method,
        "header": {name: [value] for name, value in msg.headers.items()},
        "maxRetries": msg.max_retries,
        "notBefore": epoch_ms(msg.not_before),
        "createdAt": epoch_ms(msg.created_at),
        "state": msg.state,
        "retried": msg.retried,
        **body_fields(msg.body, "body", "bodyBase64"),
    }
    optional = {
        "callback": msg.callback,
        "failureCallback": msg.failure_callback,
        "retryDelayExpression": msg.retry_delay,
        "label": msg.label,
        "callerIP": msg.caller_ip,
    }
    out.update({name: value for name, value in optional.items() if value is not None})
    if msg.flow is not None:
        out["flowControlKey"] = msg.flow.key
        out["period"] = int(msg.flow.period)
        for name in ("parallelism", "rate"):
            if getattr(msg.flow, name) is not None:
                out[name] = getattr(msg.flow, name)
    return out


def callback_body(msg: Message, outcome: Outcome, dlq_id: str | None) -> bytes:
    """Return the JSON body QStash sends to a callback (or, with `dlq_id`, a failure callback)."""
    payload: dict[str, Any] = {
        "status": outcome.status or 0,
        "header": {name: [value] for name, value in outcome.headers.items()},
        "body": b64(outcome.body or outcome.error.encode()),
        "retried": msg.retried,
        "maxRetries": msg.max_retries,
        "sourceMessageId": msg.message_id,
        "url": msg.url,
        "method": msg.method,
        "sourceHeader": {name: [value] for name, value in msg.headers.items()},
        "sourceBody": b64(msg.body),
        "notBefore": str(epoch_ms(msg.not_before)),
        "createdAt": str(epoch_ms(msg.created_at)),
    }
    if dlq_id is not None:
        payload["dlqId"] = dlq_id
    if msg.caller_ip:
        payload["callerIP"] = msg.caller_ip
    return json.dumps(payload).encode()


# -- durations and flow control ---------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Return seconds for `50s`, `2m`, `1d10h30m`, `250ms` or a bare number of seconds.

    Raises RuleError for anything else, including negative values.
    """
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _DURATION_PART.sub("", text):
        raise RuleError(f"invalid duration {text!r}")
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(text))


def parse_flow_control(key: str, value: str) -> FlowControl:
    """Parse `Upstash-Flow-Control-Value` (`parallelism=N, rate=N, period=1s`, all optional).

    Raises RuleError on an unknown name, a non-positive count or a bad period.
    """
    flow = FlowControl(key=key)
    for part in filter(None, (piece.strip() for piece in value.split(","))):
        name, _, raw = (item.strip() for item in part.partition("="))
        if name == "period":
            flow.period = parse_duration(raw)
            if flow.period <= 0:
                raise RuleError("flow-control period must be positive")
        elif name in ("parallelism", "rate"):
            if not raw.isdigit() or int(raw) < 1:
                raise RuleError(f"flow-control {name} must be a positive integer")
            setattr(flow, name, int(raw))
        else:
            raise RuleError(f"unknown flow-control setting {name!r}")
    return flow


# -- retry delays -----------------------------------------------------------------------------


def evaluate_retry_delay(expression: str, retried: int) -> float:
    """Return the delay in milliseconds that `expression` gives for `retried` (0 = first retry)
    (lib.queue.backoff.evaluate_retry_delay, which the detached worker uses too).

    Raises RuleError for anything but the documented elements, or when the arithmetic fails."""
    try:
        return _evaluate_retry_delay(expression, retried)
    except RetryDelayError as exc:
        raise RuleError(str(exc)) from exc


_RETRY_AFTER_HEADERS = (
    "Retry-After",
    "X-RateLimit-Reset",
    "X-RateLimit-Reset-Requests",
    "X-RateLimit-Reset-Tokens",
)


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """Return the retry delay a response asks for, in seconds, or None when it asks for none.

    The headers QStash honours carry seconds, a duration such as `6m5s`, or an HTTP date.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in _RETRY_AFTER_HEADERS:
        raw = lowered.get(name.lower(), "").strip()
        if not raw:
            continue
        try:
            return max(0.0, parse_duration(raw))
        except RuleError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - now)
    return None
