"""The QStash wire format, written and read in one place.

- The delivery body: `{job_id, user_id, tier, retries}`, ids only, never the job's input. The
  producer writes it (`message_body`), the worker reads it (`parse_delivery`).
- The failure callback QStash posts when it gives up (https://upstash.com/docs/qstash/features/
  callbacks): the dev `DirectPublisher` writes it (`failure_callback_body`), the worker reads it
  (`parse_failure_callback`).
- The publish options (`publish`), shared by the producer and `cs dlq redrive`.
- The worker's answer to a delivery (`answer`): the one place a `lib.verdict.Verdict` becomes an
  HTTP status and Upstash headers.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lib.config import Settings
from lib.errors import UnavailableError
from lib.queue.plans import failure_callback_retries
from lib.verdict import Busy, Done, GiveUp, Verdict

# QStash's status for "do not retry" (https://upstash.com/docs/qstash/features/retry): with this
# header, any status stops the retries and sends the message to the DLQ and the failure callback.
NON_RETRYABLE_STATUS = 489
NON_RETRYABLE = {"Upstash-NonRetryable-Error": "true"}


class Delivery(NamedTuple):
    """A parsed delivery body; `retries` is None when the body does not carry it. `gen` is the
    job's delivery generation in a message the worker published itself (detached mode's retries
    and model waits), None in the producer's and the reconciler's."""

    job_id: str
    user_id: str
    tier: str
    retries: int | None
    gen: int | None = None


class FailureCallback(NamedTuple):
    """A parsed failure callback: the delivery QStash gave up on, and why in words."""

    delivery: Delivery
    reason: str


@dataclass
class Answer:
    """What the worker answers the broker."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def message_body(
    job_id: str, user_id: str, tier: str, retries: int, gen: int | None = None
) -> bytes:
    """The signed body of a delivery. `retries` lets the worker know its last attempt; `gen`
    (detached mode) lets it drop a message that a newer one of the same job superseded."""
    body: dict[str, Any] = {"job_id": job_id, "user_id": user_id, "tier": tier, "retries": retries}
    if gen is not None:
        body["gen"] = gen
    return json.dumps(body, separators=(",", ":")).encode()


def parse_delivery(body: bytes) -> Delivery | None:
    """The delivery in `body`, or None when it is not one (not JSON, or an id is missing)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(k), str) for k in ("job_id", "user_id", "tier")
    ):
        return None
    retries, gen = payload.get("retries"), payload.get("gen")
    try:
        return Delivery(
            payload["job_id"],
            payload["user_id"],
            payload["tier"],
            int(retries) if retries is not None else None,
            int(gen) if gen is not None else None,
        )
    except (TypeError, ValueError):
        return None


def failure_callback_body(status: int, source: bytes, *, url: str, message_id: str) -> bytes:
    """A failure callback as QStash posts it after the last retry of `source` (no retries)."""
    return json.dumps(
        {
            "status": status,
            "retried": 0,
            "maxRetries": 0,
            "sourceMessageId": message_id,
            "url": url,
            "sourceBody": base64.b64encode(source).decode(),
        }
    ).encode()


def parse_failure_callback(body: bytes) -> FailureCallback | None:
    """The delivery a failure callback gave up on, or None when its source body is unusable."""
    try:
        callback = json.loads(body)
        source = parse_delivery(base64.b64decode(callback.get("sourceBody") or ""))
    except (ValueError, TypeError, AttributeError):
        return None
    if source is None:
        return None
    reason = (
        f"delivery failed after {callback.get('retried', 0)} retries "
        f"(last status {callback.get('status')})"
    )
    return FailureCallback(source, reason)


def callback_headers(settings: Settings, retries: int) -> dict[str, str]:
    """`Upstash-Failure-Callback-Retries` (https://upstash.com/docs/qstash/features/callbacks,
    "Configuring Callbacks"): by default the callback gets the message's own retries, none at
    JOB_RETRIES=0, and one deferred /v1/failed would then lose the refund. The SDK's publish has
    no parameter for it; `prepare_headers` sends a `failure_callback_headers` name that already
    starts with the prefix unchanged."""
    return {
        "Upstash-Failure-Callback-Retries": str(
            failure_callback_retries(settings.qstash_plan, retries)
        )
    }


def publish(
    client: Any,
    settings: Settings,
    *,
    url: str,
    body: str | bytes,
    retries: int,
    deduplication_id: str,
    what: str = "the job broker is unavailable",
    **options: Any,
) -> str:
    """Publish `body` to `url` with the SDK `client` and return the message id.

    Every publish has the job timeout, the retries, and the failure callback (`options` may name
    another; default `FAILED_URL`) with its retries header; `options` are the SDK's other
    `publish` keywords (retry_delay, flow_control, content_type, headers, method).
    Raises UnavailableError, with `what` as its message, when the broker cannot be reached."""
    import httpx
    from qstash.errors import QStashError

    options.setdefault("failure_callback", settings.failed_url)
    if options["failure_callback"]:
        options["failure_callback_headers"] = callback_headers(settings, retries)
    try:
        response: Any = client.message.publish(
            url=url,
            body=body,
            retries=retries,
            deduplication_id=deduplication_id,
            timeout=f"{settings.job_timeout_seconds}s",
            **options,
        )
    except (QStashError, httpx.HTTPError) as exc:
        raise UnavailableError(what.format(exc=exc)) from exc
    return str(response.message_id)


def answer(verdict: Verdict) -> Answer:
    """The HTTP answer to the broker for `verdict`: the one place verdicts meet QStash.

    Done is 200 (no retry). GiveUp is 489 with `Upstash-NonRetryable-Error`. Busy and a throttled
    RetryAfter are 429, any other RetryAfter 503, with `Retry-After` when it has seconds: a
    RetryAfter without them (an outage) leaves the spacing to QStash's own backoff (12 s, 2 m 28 s,
    30 m 8 s, ...), where a Retry-After would replace it and still use up a retry."""
    if isinstance(verdict, Done):
        body = {
            "job_id": verdict.job_id,
            "status": verdict.status,
            "note": verdict.note,
            "usage": verdict.usage,
            "changed": verdict.changed,
        }
        return Answer(200, {k: v for k, v in body.items() if v is not None})
    if isinstance(verdict, GiveUp):
        if verdict.job_id is None:
            return Answer(
                NON_RETRYABLE_STATUS, _error(verdict.code, verdict.message), NON_RETRYABLE
            )
        failed = {"job_id": verdict.job_id, "status": "failed", "code": verdict.code}
        return Answer(NON_RETRYABLE_STATUS, failed, dict(NON_RETRYABLE))
    status = 429 if isinstance(verdict, Busy) or verdict.throttled else 503
    headers = {}
    if verdict.seconds is not None:
        headers["Retry-After"] = str(max(1, math.ceil(verdict.seconds)))
    return Answer(status, _error(verdict.code, verdict.message), headers)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": None}}
