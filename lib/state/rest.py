"""Upstash Redis over its REST API, with the official `upstash-redis` client.

Upstash REST serves no blocking commands, so `wait` subscribes to the job's notify channel
through Upstash's `GET /subscribe/<channel>` Server-Sent-Events endpoint (the EMIT script
PUBLISHes each new entry id there) and then reads the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from lib.errors import UnavailableError
from lib.state.backend import Entry, pairs
from lib.state.scripts import Script

_DOWN = (httpx.TransportError,)


class RestBackend:
    """The Upstash REST API; every call is one HTTPS request with a bounded timeout."""

    transport = "rest"

    def __init__(self, url: str, token: str, *, timeout: float = 5.0) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        # rest_retries=0: a retried EVAL could run twice; our callers decide about retrying.
        self._client = Redis(url=self._url, token=token, rest_retries=0, allow_telemetry=False)
        # upstash-redis builds its httpx client with no timeout at all; bound every call. That
        # one client also carries the subscriptions: each new client loads the CA bundle, which
        # a cold start pays (docs/performance.md).
        self._sse: httpx.Client = self._client._http._client  # noqa: SLF001
        self._sse.timeout = httpx.Timeout(timeout)
        self._loaded: set[str] = set()

    def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        str_args = [str(a) for a in args]
        try:
            if script.sha in self._loaded:
                try:
                    return self._client.evalsha(script.sha, keys=keys, args=str_args)
                except UpstashError as exc:
                    if "NOSCRIPT" not in str(exc):
                        raise
            result = self._client.eval(script.source, keys=keys, args=str_args)
            self._loaded.add(script.sha)
            return result
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def run_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        # Upstash's /pipeline would make this one request; one per call keeps it simple here.
        return [self.run(script, keys, args) for script, keys, args in calls]

    def read(self, stream: str, after: str, count: int) -> list[Entry]:
        start = "-" if after in ("", "0", "0-0") else f"({after}"
        try:
            rows: Any = self._client.execute(["XRANGE", stream, start, "+", "COUNT", str(count)])
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        return [(str(row[0]), pairs(row[1])) for row in rows or []]

    def wait(
        self, stream: str, channel: str, after: str, timeout: float, count: int
    ) -> list[Entry]:
        if after in ("", "0", "0-0"):
            # A reader from the stream's start nearly always finds entries (the submit wrote
            # `queued`): read first and skip the subscription's round trips (a cold first frame).
            rows = self.read(stream, after, count)
            if rows:
                return rows
        deadline = time.monotonic() + timeout
        url = f"{self._url}/subscribe/{channel}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        try:
            with self._sse.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(self._timeout, read=timeout)
            ) as response:
                if response.status_code != 200:
                    raise UnavailableError(f"redis subscribe answered {response.status_code}")
                lines = response.iter_lines()
                # Read only after the subscription is confirmed, so no PUBLISH slips between.
                for line in lines:
                    if line.startswith("data:") and "subscribe" in line:
                        break
                rows = self.read(stream, after, count)
                if rows:
                    return rows
                for line in lines:
                    if line.startswith("data:") and line[5:].lstrip().startswith("message"):
                        break
                    if time.monotonic() >= deadline:
                        break
        except httpx.ReadTimeout:
            pass
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        return self.read(stream, after, count)

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]:
        url = f"{self._url}/subscribe/{channel}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        try:
            # Upstash sends a keep-alive comment now and then; `stop` is checked on each line.
            with self._sse.stream(
                "GET", url, headers=headers, timeout=httpx.Timeout(self._timeout, read=30)
            ) as response:
                if response.status_code != 200:
                    raise UnavailableError(f"redis subscribe answered {response.status_code}")
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    kind, _, rest = line.removeprefix("data:").lstrip().partition(",")
                    if line.startswith("data:") and kind == "message":
                        yield rest.partition(",")[2]
        except httpx.ReadTimeout:
            return  # a quiet channel: the caller subscribes again, nothing is wrong
        except _DOWN as exc:
            if stop.is_set():
                return
            raise UnavailableError("redis is unavailable") from exc

    def ping(self) -> None:
        try:
            self._client.ping()
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def command(self, *args: str | int) -> Any:
        try:
            return self._client.execute([str(a) for a in args])
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def close(self) -> None:
        self._client.close()
        self._sse.close()
