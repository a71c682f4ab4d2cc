"""Parsing `POST /v2/publish/<url>` into a dev broker Message, with QStash's header rules.

The headers and their defaults are QStash's (https://upstash.com/docs/qstash/api-reference/
messages/publish-a-message); the account's plan (lib/queue/plans.py) bounds retries and the
response time. Every refusal is a RuleError whose message is safe to return to the client.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import unquote

from werkzeug.datastructures import Headers

from lib.queue.plans import DEFAULT_PLAN, Plan, plan
from scripts.fakes.dev_broker_model import (
    Message,
    RuleError,
    evaluate_retry_delay,
    new_message_id,
    parse_duration,
    parse_flow_control,
)

DEFAULT_RETRIES = 3
# A delivery's longest wait when neither `Upstash-Timeout` nor the plan (enterprise) bounds it.
UNBOUNDED_TIMEOUT_SECONDS = 86400.0
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
PUBLISH_PREFIX = "/v2/publish/"
_FORWARD_PREFIXES = {
    "upstash-forward-": "destination",
    "upstash-callback-forward-": "callback",
    "upstash-failure-callback-forward-": "failure_callback",
}


def _abort(message: str) -> NoReturn:
    raise RuleError(message)


def _destination(environ: Mapping[str, Any]) -> str:
    # The destination is the rest of the raw request target, query string included; routing
    # would merge the `//` of `http://` and drop the query.
    raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
    if raw and PUBLISH_PREFIX in raw:
        destination = raw.split(PUBLISH_PREFIX, 1)[1]
    else:
        path = str(environ.get("PATH_INFO", ""))
        query = str(environ.get("QUERY_STRING", ""))
        destination = path[len(PUBLISH_PREFIX) :] + (f"?{query}" if query else "")
    if destination.lower().startswith(("http%3a", "https%3a")):
        destination = unquote(destination)
    if not destination.startswith(("http://", "https://")):
        _abort("destination must be an http:// or https:// URL (URL groups are not supported)")
    return destination


def _int_header(headers: Headers, name: str, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    if not raw.strip().isdigit():
        _abort(f"{name} must be a non-negative integer")
    return int(raw)


def _url_header(headers: Headers, name: str) -> str | None:
    url = headers.get(name)
    if url is not None and not url.startswith(("http://", "https://")):
        _abort(f"{name} must be an http:// or https:// URL")
    return url


def _forwarded(headers: Headers) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {target: {} for target in _FORWARD_PREFIXES.values()}
    for name, value in headers.items():
        for prefix, target in _FORWARD_PREFIXES.items():
            if name.lower().startswith(prefix):
                out[target][name[len(prefix) :]] = value
    return out


def _not_before(headers: Headers, now: float, time_scale: float) -> float:
    # QStash gives Upstash-Not-Before precedence over Upstash-Delay. Not-Before is a wall-clock
    # instant and is kept as given; Upstash-Delay is a duration and is scaled like retry delays.
    if "Upstash-Not-Before" in headers:
        return float(_int_header(headers, "Upstash-Not-Before", 0))
    if "Upstash-Delay" in headers:
        return now + parse_duration(headers["Upstash-Delay"]) * time_scale
    return now


def _dedup_key(headers: Headers, message: Message) -> str | None:
    if "Upstash-Deduplication-Id" in headers:
        return "id:" + headers["Upstash-Deduplication-Id"]
    if headers.get("Upstash-Content-Based-Deduplication", "").lower() != "true":
        return None
    # QStash hashes the destination, the body, Content-Type and the forwarded headers.
    digest = hashlib.sha256(message.url.encode() + b"\0" + message.body)
    for name, value in sorted((k.lower(), v) for k, v in message.headers.items()):
        digest.update(f"\0{name}:{value}".encode())
    return "content:" + digest.hexdigest()


def _retries(headers: Headers, name: str, default: int, limits: Plan) -> int:
    value = _int_header(headers, name, default)
    # QStash caps retries per plan ("Max Retry Count", lib/queue/plans.py) and does not document
    # the answer to a publish over it; the stand-in refuses it as it refuses any invalid header
    # (400 with {"error": ...}), so a producer that asks for more than its plan allows notices.
    if limits.max_retries is not None and value > limits.max_retries:
        _abort(f"{name}={value} is over the {limits.name} plan's maximum of {limits.max_retries}")
    return value


def _timeout(headers: Headers, limits: Plan) -> float:
    # Without Upstash-Timeout a delivery may run for the plan's whole response limit; with it, no
    # longer than that limit either (https://upstash.com/docs/qstash/features/retry: "QStash will
    # abort a delivery attempt if the HTTP call ... does not return within the plan-specific Max
    # HTTP Response Duration").
    ceiling = limits.max_response_seconds or UNBOUNDED_TIMEOUT_SECONDS
    if "Upstash-Timeout" not in headers:
        return ceiling
    given = parse_duration(headers["Upstash-Timeout"])
    return min(given, ceiling) if given > 0 else ceiling


def parse_publish(
    environ: Mapping[str, Any],
    headers: Headers,
    body: bytes,
    *,
    time_scale: float,
    caller_ip: str | None = None,
    limits: Plan | None = None,
) -> tuple[Message, str | None]:
    """Turn a `POST /v2/publish/<url>` request into a Message and its deduplication key.

    `limits` is the account's plan (default: pay-as-you-go). Callbacks get the message's own
    retry count unless `Upstash-Callback-Retries` / `Upstash-Failure-Callback-Retries` say
    otherwise (https://upstash.com/docs/qstash/features/callbacks, "Configuring Callbacks":
    "Default is same as original message retries"). Raises RuleError, whose message is safe to
    return to the client, on any invalid header or a retry count over the plan's maximum.
    """
    limits = limits or plan(DEFAULT_PLAN)
    now = time.time()
    destination = _destination(environ)
    forwarded = _forwarded(headers)
    if headers.get("Content-Type"):
        forwarded["destination"]["Content-Type"] = headers["Content-Type"]
    method = headers.get("Upstash-Method", "POST").upper()
    if method not in METHODS:
        _abort(f"Upstash-Method must be one of {', '.join(sorted(METHODS))}")
    retry_delay = headers.get("Upstash-Retry-Delay")
    if retry_delay is not None:
        evaluate_retry_delay(retry_delay, 0)
    max_retries = _retries(headers, "Upstash-Retries", DEFAULT_RETRIES, limits)
    flow_key = headers.get("Upstash-Flow-Control-Key")
    message = Message(
        message_id=new_message_id(),
        url=destination,
        method=method,
        body=body,
        headers=forwarded["destination"],
        max_retries=max_retries,
        not_before=_not_before(headers, now, time_scale),
        timeout=_timeout(headers, limits),
        created_at=now,
        retry_delay=retry_delay,
        callback=_url_header(headers, "Upstash-Callback"),
        failure_callback=_url_header(headers, "Upstash-Failure-Callback"),
        callback_headers=forwarded["callback"],
        failure_callback_headers=forwarded["failure_callback"],
        callback_retries=_retries(headers, "Upstash-Callback-Retries", max_retries, limits),
        failure_callback_retries=_retries(
            headers, "Upstash-Failure-Callback-Retries", max_retries, limits
        ),
        flow=parse_flow_control(flow_key, headers.get("Upstash-Flow-Control-Value", ""))
        if flow_key
        else None,
        label=headers.get("Upstash-Label"),
        caller_ip=caller_ip,
    )
    return message, _dedup_key(headers, message)
