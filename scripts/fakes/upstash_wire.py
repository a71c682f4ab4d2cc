"""The Upstash stand-in's wire to Redis and back: commands pipelined on one connection, replies
rendered as Upstash's JSON, and pub/sub messages relayed as its SSE frames.

The HTTP side (auth, routes, faults) is `scripts.fakes.upstash_standin`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from redis.client import PubSub
from redis.exceptions import ResponseError

log = logging.getLogger("upstash_standin")

Arg = str | bytes
Reply = Any  # what the RESP2 parser yields: bytes, int, None, ResponseError, or lists of those


def run(pool: redis.ConnectionPool, commands: Sequence[tuple[Arg, ...]]) -> list[Reply]:
    """Send `commands` in one round trip on one connection; one reply (or error) per command."""
    if not commands:
        return []
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Reply] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        log.debug("ran %s", ",".join(command_name(c) for c in commands))
        return replies
    except BaseException:
        # The connection may hold unread replies; never hand it to the next request.
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def command_name(command: tuple[Arg, ...]) -> str:
    head = command[0]
    return (head.decode(errors="replace") if isinstance(head, bytes) else head).upper()


def render(value: Reply, encode: bool) -> Any:
    """JSON for a Redis reply; with `encode`, every string but the status "OK" is base64."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, list):
        return [render(v, encode) for v in value]
    if isinstance(value, ResponseError):
        # An error nested in an array (a Lua table or an EXEC slot) travels as its text.
        value = str(value)
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if not encode:
        # Upstash replaces invalid UTF-8 with U+FFFD unless base64 was asked for.
        return raw.decode("utf-8", errors="replace")
    return "OK" if raw == b"OK" else base64.b64encode(raw).decode("ascii")


def sse_events(pubsub: PubSub, keepalive_seconds: float) -> Iterator[str]:
    """Relay pub/sub messages as SSE until the client goes away.

    The server closes this generator when a write to the client fails; the keep-alive comment
    guarantees a write at least every `keepalive_seconds`, so an abandoned stream is noticed
    and its Redis connection released instead of holding a thread forever.
    """
    try:
        last_write = time.monotonic()
        while True:
            message = pubsub.get_message(timeout=min(1.0, keepalive_seconds))
            now = time.monotonic()
            if message is not None:
                yield sse_frame(message)
                last_write = now
            elif now - last_write >= keepalive_seconds:
                yield ": keep-alive\n\n"
                last_write = now
    finally:
        pubsub.close()
        log.info("subscription closed")


def sse_frame(message: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

    kind = text(message["type"])
    fields = [kind]
    if kind == "pmessage":
        fields.append(text(message["pattern"]))
    fields += [text(message["channel"]), text(message["data"])]
    # A payload with line breaks becomes several data lines; SSE clients join them with "\n".
    lines = ",".join(fields).splitlines() or [""]
    return "".join(f"data: {line}\n" for line in lines) + "\n"
