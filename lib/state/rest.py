"""Upstash Redis over its REST API, with the official `upstash-redis` client.

Upstash REST serves no blocking commands, so `wait` subscribes to the job's notify channel
through Upstash's `POST /subscribe/<channel>` Server-Sent-Events endpoint (documented as POST in
upstash/docs `redis/features/restapi.mdx`; the EMIT script PUBLISHes each new entry id there)
and then reads the stream.

"Redis unavailable" (`UnavailableError`) is every answer that is not Redis's own verdict on our
command: a transport error or timeout, a 5xx or non-JSON answer from the edge, and an `error`
answer from the service itself (`ERR max daily request limit exceeded`, auth, quotas). Redis's
verdicts (a script error raised inside one of our scripts, a wrong type or arity) are bugs in
this project and stay loud as `UpstashError`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from lib.errors import UnavailableError
from lib.state.backend import Entry, pairs
from lib.state.scripts import Script

_T = TypeVar("_T", bound=Sized)


class _EdgeError(Exception):
    """The answer did not come from the database: a 5xx or a body that is not JSON."""


_DOWN = (httpx.TransportError, _EdgeError)
# Redis's own verdicts on a command. Every error raised while a script runs names the script
# ("... script: <sha>, on @user_script:3." since Redis 7; "Error running script ... @user_script"
# before), a compile error says so, and the rest are Redis's fixed argument and type errors.
_REDIS_VERDICT = re.compile(
    r"user_script|Error (running|compiling) script|^WRONGTYPE |^ERR (wrong number of arguments"
    r"|unknown command|syntax error|value is not|Command is not available|The stream has exhausted)"
)


def _check_answer(response: httpx.Response) -> None:
    """httpx response hook: only a JSON answer below 500 is the database's own (the REST API
    answers `application/json`, restapi.mdx "RESP2 Format Responses")."""
    if "/subscribe/" in response.request.url.path:
        return  # an SSE subscription: `_subscribe` checks its answer itself
    content_type = response.headers.get("content-type", "")
    if response.status_code >= 500 or not content_type.startswith("application/json"):
        raise _EdgeError(f"redis answered {response.status_code} ({content_type or 'no type'})")


def _service_error(exc: UpstashError) -> bool:
    """True when an `error` answer comes from the service, not from Redis running our command."""
    return not _REDIS_VERDICT.search(str(exc))


class RestBackend:
    """The Upstash REST API; every call is one HTTPS request with a bounded timeout."""

    transport = "rest"

    def __init__(self, url: str, token: str, *, timeout: float = 5.0) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        # rest_retries=0: a retried EVAL could run twice; our callers decide about retrying.
        self._client = Redis(url=self._url, token=token, rest_retries=0, allow_telemetry=False)
        # upstash-redis builds its httpx client with no timeout at all; bound every call. The
        # SDK reads any answer as JSON whatever its status; the hook refuses edge answers first.
        # That one client also carries the subscriptions: each new client loads the CA bundle,
        # which a cold start pays (docs/performance.md).
        self._sse: httpx.Client = self._client._http._client  # noqa: SLF001
        self._sse.timeout = httpx.Timeout(timeout)
        self._sse.event_hooks["response"] = [_check_answer]
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
        except UpstashError as exc:
            if _service_error(exc):
                raise UnavailableError("redis is unavailable") from exc
            raise

    def run_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        # Upstash's /pipeline would make this one request; one per call keeps it simple here.
        return [self.run(script, keys, args) for script, keys, args in calls]

    def read(self, stream: str, after: str, count: int) -> list[Entry]:
        start = "-" if after in ("", "0", "0-0") else f"({after}"
        rows: Any = self.command("XRANGE", stream, start, "+", "COUNT", str(count))
        return [(str(row[0]), pairs(row[1])) for row in rows or []]

    def read_many(self, streams: dict[str, str], count: int) -> list[tuple[str, list[Entry]]]:
        """One XREAD without BLOCK (which Upstash REST refuses) over several streams."""
        keys = list(streams)
        ids = [streams[key] if streams[key] not in ("", "0") else "0-0" for key in keys]
        rows: Any = self.command("XREAD", "COUNT", str(count), "STREAMS", *keys, *ids)
        return [
            (str(key), [(str(row[0]), pairs(row[1])) for row in entries])
            for key, entries in rows or []
        ]

    def wait(
        self, stream: str, channel: str, after: str, timeout: float, count: int
    ) -> list[Entry]:
        if after in ("", "0", "0-0"):
            # A reader from the stream's start nearly always finds entries (the submit wrote
            # `queued`): read first and skip the subscription's round trips (a cold first frame).
            rows = self.read(stream, after, count)
            if rows:
                return rows
        return self._wait(channel, timeout, lambda: self.read(stream, after, count))

    def wait_many(
        self, streams: dict[str, str], channel: str, timeout: float, count: int
    ) -> list[tuple[str, list[Entry]]]:
        return self._wait(channel, timeout, lambda: self.read_many(streams, count))

    def _wait(self, channel: str, timeout: float, read: Callable[[], _T]) -> _T:
        """`read()` once subscribed to `channel`; when it finds nothing, again after the first
        message there or after `timeout` seconds, whichever comes first."""
        deadline = time.monotonic() + timeout
        confirmed = False
        try:
            with self._subscribe(channel, read=timeout) as response:
                lines = response.iter_lines()
                # Read only after the subscription is confirmed, so no PUBLISH slips between.
                for line in lines:
                    if line.startswith("data:") and "subscribe" in line:
                        confirmed = True
                        break
                rows = read()
                if rows:
                    return rows
                for line in lines:
                    if line.startswith("data:") and line[5:].lstrip().startswith("message"):
                        break
                    if time.monotonic() >= deadline:
                        break
        except httpx.ReadTimeout as exc:
            # No answer at all in the client's timeout is a hang, not a quiet channel. A wait
            # shorter than that (a short SSE heartbeat) may end before a slow confirmation:
            # it reads, which still fails loudly when Redis is down.
            if not confirmed and timeout >= self._timeout:
                raise UnavailableError("redis is unavailable") from exc
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        return read()

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]:
        confirmed = False
        try:
            # Upstash sends a keep-alive comment now and then; `stop` is checked on each line.
            with self._subscribe(channel, read=30) as response:
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    kind, _, rest = line.removeprefix("data:").lstrip().partition(",")
                    if line.startswith("data:") and kind == "subscribe":
                        confirmed = True
                    elif line.startswith("data:") and kind == "message":
                        yield rest.partition(",")[2]
        except httpx.ReadTimeout as exc:
            if confirmed or stop.is_set():
                return  # a quiet channel: the caller subscribes again, nothing is wrong
            raise UnavailableError("redis is unavailable") from exc
        except _DOWN as exc:
            if stop.is_set():
                return
            raise UnavailableError("redis is unavailable") from exc

    @contextmanager
    def _subscribe(self, channel: str, *, read: float) -> Iterator[httpx.Response]:
        """Upstash's SSE subscription; raises UnavailableError unless it answers 200."""
        with self._sse.stream(
            "POST",
            f"{self._url}/subscribe/{channel}",
            headers={"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"},
            timeout=httpx.Timeout(self._timeout, read=read),
        ) as response:
            if response.status_code != 200:
                raise UnavailableError(f"redis subscribe answered {response.status_code}")
            yield response

    def ping(self) -> None:
        self.command("PING")

    def command(self, *args: str | int) -> Any:
        try:
            return self._client.execute([str(a) for a in args])
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        except UpstashError as exc:
            if _service_error(exc):
                raise UnavailableError("redis is unavailable") from exc
            raise

    def close(self) -> None:
        self._client.close()
        self._sse.close()
