"""`cs dlq list|redrive`: the broker's dead-letter queue, through the official QStash SDK.

It works the same against QStash and the dev broker (`QSTASH_URL`, `QSTASH_TOKEN`). Redrive
publishes the dead message's body again to its URL (or `--to`), with the options the producer
publishes with (`lib.queue.wire.publish`): retries, retry delay, failure callback and its
retries header, flow control, timeout and the forwarded headers, then deletes it from the DLQ.
Its deduplication id is derived from the DLQ id, so redriving one message twice delivers it once.
"""

from __future__ import annotations

import argparse
import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lib import config
from lib.cli.output import EXIT_FAILED, EXIT_OK, console, emit, note
from lib.config import Settings
from lib.errors import ConfigError, UnavailableError
from lib.queue import wire

PAGE = 100
TIMEOUT_SECONDS = 15.0


def client(settings: Settings) -> Any:
    """A QStash SDK client for the configured broker. Raises ConfigError without one."""
    from qstash import QStash

    if settings.qstash_mode == "direct":
        raise ConfigError("QSTASH_MODE=direct: there is no broker, so no dead-letter queue")
    if not settings.qstash_token:
        raise ConfigError("set QSTASH_TOKEN (and QSTASH_URL for a dev broker)")
    import httpx

    qstash = QStash(settings.qstash_token, base_url=settings.qstash_url, retry=False)
    # The SDK waits up to 600 s by default; a command line should say "down" much sooner.
    qstash.http._client = httpx.Client(timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=5.0))
    return qstash


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    import httpx
    from qstash.errors import QStashError

    try:
        return fn(*args, **kwargs)
    except (QStashError, httpx.HTTPError) as exc:
        raise UnavailableError(f"{what}: {exc}") from exc


def body_of(message: Any) -> str | bytes:
    if message.body is not None:
        return str(message.body)
    if message.body_base64:
        return base64.b64decode(message.body_base64)
    return ""


def job_id_of(message: Any) -> str:
    """The job a message is about (our bodies are `{"job_id", ...}`), else ""."""
    try:
        value = json.loads(body_of(message))
    except (ValueError, TypeError):
        return ""
    return str(value.get("job_id", "")) if isinstance(value, dict) else ""


def _safe_url(url: str) -> str:
    # Query strings may carry tokens.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _when(epoch_ms: int | None) -> str:
    if not epoch_ms:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def all_messages(qstash: Any) -> list[Any]:
    messages: list[Any] = []
    cursor = None
    while True:
        page = _call("listing the DLQ", qstash.dlq.list, cursor=cursor, count=PAGE)
        messages.extend(page.messages)
        cursor = page.cursor
        if not cursor or not page.messages:
            return messages


def summary(message: Any) -> dict[str, Any]:
    return {
        "dlq_id": message.dlq_id,
        "message_id": message.message_id,
        "job_id": job_id_of(message),
        "url": _safe_url(message.url),
        "response_status": message.response_status,
        "max_retries": message.max_retries,
        "created_at": _when(message.created_at),
    }


def list_dlq(args: argparse.Namespace) -> int:
    settings = config.load("any")
    messages = all_messages(client(settings))
    if args.json:
        emit([summary(m) for m in messages])
        return EXIT_OK
    from rich.table import Table

    table = Table(title="dead letters")
    for column in ("dlq id", "job", "url", "status", "retries", "created (UTC)"):
        table.add_column(column, no_wrap=column != "url")
    for item in map(summary, messages):
        table.add_row(
            item["dlq_id"],
            item["job_id"],
            item["url"],
            str(item["response_status"]),
            str(item["max_retries"]),
            item["created_at"],
        )
    console().print(table)
    note(f"{len(messages)} message(s); redrive with: cs dlq redrive [DLQ_ID ...]")
    return EXIT_OK


def _forwarded(message: Any) -> tuple[str | None, dict[str, str]]:
    content_type, headers = None, {}
    for name, values in (message.headers or {}).items():
        value = values[0] if isinstance(values, list) and values else str(values)
        if name.lower() == "content-type":
            content_type = value
        elif not name.lower().startswith("upstash-"):
            headers[name] = value
    return content_type, headers


def _flow_control(message: Any) -> dict[str, Any] | None:
    flow = message.flow_control
    if flow is None:
        return None
    out: dict[str, Any] = {"key": flow.key}
    for name in ("parallelism", "rate", "period"):
        if getattr(flow, name, None) is not None:
            out[name] = getattr(flow, name)
    return out


def redrive_one(qstash: Any, settings: Settings, message: Any, to: str | None) -> str:
    """Publish `message` again and delete it from the DLQ; returns the new message id."""
    content_type, headers = _forwarded(message)
    new_id = wire.publish(
        qstash,
        settings,
        url=to or message.url,
        body=body_of(message),
        retries=message.max_retries,
        deduplication_id=f"redrive-{message.dlq_id}",
        what=f"publishing {message.dlq_id} again: {{exc}}",
        content_type=content_type,
        method=message.method,
        headers=headers or None,
        retry_delay=message.retry_delay_expression,
        failure_callback=message.failure_callback,
        flow_control=_flow_control(message),
    )
    _call(f"deleting {message.dlq_id} from the DLQ", qstash.dlq.delete, message.dlq_id)
    return new_id


def redrive(args: argparse.Namespace) -> int:
    settings = config.load("any")
    qstash = client(settings)
    if args.dlq_ids:
        messages = [_call(f"reading {i}", qstash.dlq.get, i) for i in args.dlq_ids]
    else:
        messages = all_messages(qstash)
        if not messages:
            note("the dead-letter queue is empty")
    failed = 0
    for message in messages:
        try:
            new_id = redrive_one(qstash, settings, message, args.to)
        except UnavailableError as exc:
            failed += 1
            note(f"{message.dlq_id}: {exc.message}")
            continue
        job = job_id_of(message)
        target = _safe_url(args.to or message.url)
        print(f"{message.dlq_id} -> {new_id} ({target}{', job ' + job if job else ''})")
    return EXIT_FAILED if failed else EXIT_OK
