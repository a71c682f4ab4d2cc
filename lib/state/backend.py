"""The small interface in front of Redis, and its two adapters' shared types.

A backend runs the project's Lua scripts, reads a stream after an id, and waits for new stream
entries, of one stream or of several at once: by blocking XREAD over TCP, or through Upstash's
REST `subscribe` endpoint over REST (Upstash REST serves no blocking commands).
`tests/test_state.py` runs the same suite against both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from lib.state.scripts import Script

Entry = tuple[str, dict[str, str]]


class RedisBackend(Protocol):
    transport: str  # "tcp" (blocking XREAD) or "rest" (Upstash REST: waits by subscription)

    def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """Run a Lua script atomically; strings come back as str, Lua false as None."""

    def run_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        """Run several scripts in one round trip (each atomic on its own), answers in order."""

    def read(self, stream: str, after: str, count: int) -> list[Entry]:
        """Entries of `stream` strictly after id `after` ("0" = from the start), oldest first."""

    def wait(
        self, stream: str, channel: str, after: str, timeout: float, count: int
    ) -> list[Entry]:
        """Like `read`, but wait up to `timeout` seconds for an entry when there is none yet."""

    def wait_many(
        self, streams: dict[str, str], channel: str, timeout: float, count: int
    ) -> list[tuple[str, list[Entry]]]:
        """The entries of several streams, each strictly after its own id ("0" = from the
        start), in one read, waiting up to `timeout` seconds for one when there is none yet:
        one blocking XREAD over TCP; over REST a subscription to `channel` (where the writers
        of those streams PUBLISH), then one XREAD. (stream, entries) for each stream with some."""

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]:
        """The messages PUBLISHed on `channel` until `stop` is set (checked every second).
        Raises UnavailableError when the connection fails; the caller reconnects."""

    def ping(self) -> None:
        """Return if Redis answers; raise UnavailableError otherwise."""

    def command(self, *args: str | int) -> Any:
        """Run one plain command (tests and health checks)."""

    def close(self) -> None: ...


def pairs(flat: list[Any]) -> dict[str, str]:
    """Turn a flat [field, value, ...] list into a dict."""
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
