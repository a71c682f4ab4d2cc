"""Redis over TCP with redis-py: any Redis or Valkey, or Upstash's `rediss://` endpoint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import redis

from lib.errors import UnavailableError
from lib.state.backend import Entry
from lib.state.scripts import Script

_DOWN = (redis.ConnectionError, redis.TimeoutError)
MAX_BLOCK_SECONDS = 20.0


class TcpBackend:
    """A pooled redis-py client; `wait` is a blocking XREAD on a connection of its own."""

    transport = "tcp"

    def __init__(self, url: str, *, max_connections: int = 2000, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            max_connections=max_connections,
        )
        # Blocking reads get their own pool, whose socket timeout outlasts the longest block.
        self._blocking = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=MAX_BLOCK_SECONDS + timeout,
            max_connections=max_connections,
        )
        self._scripts: dict[str, Any] = {}

    def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        registered = self._scripts.get(script.name)
        if registered is None:
            registered = self._scripts[script.name] = self._client.register_script(script.source)
        try:
            return registered(keys=keys, args=args)
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def run_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        # Plain EVALSHA in a pipeline: redis-py's scripts in a pipeline first send SCRIPT EXISTS,
        # one more billed command per round of lease renewals. A script the server does not
        # know yet (NOSCRIPT: it did not run there) is loaded, and only those calls are re-sent.
        try:
            answers = self._evalsha_many(calls)
            missing = [
                i for i, a in enumerate(answers) if isinstance(a, redis.exceptions.NoScriptError)
            ]
            if missing:
                for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
                    self._client.script_load(script.source)
                again = self._evalsha_many([calls[i] for i in missing])
                for i, answer in zip(missing, again, strict=True):
                    answers[i] = answer
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def _evalsha_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    def read(self, stream: str, after: str, count: int) -> list[Entry]:
        start = "-" if after in ("", "0", "0-0") else f"({after}"
        try:
            rows: Any = self._client.xrange(stream, min=start, max="+", count=count)
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        return [(entry_id, dict(fields)) for entry_id, fields in rows]

    def wait(
        self, stream: str, channel: str, after: str, timeout: float, count: int
    ) -> list[Entry]:
        after = after if after not in ("", "0") else "0-0"
        block_ms = max(1, int(min(timeout, MAX_BLOCK_SECONDS) * 1000))
        try:
            result: Any = self._blocking.xread({stream: after}, count=count, block=block_ms)
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        if not result:
            return []
        _, rows = result[0]
        return [(entry_id, dict(fields)) for entry_id, fields in rows]

    def wait_many(
        self, streams: dict[str, str], channel: str, timeout: float, count: int
    ) -> list[tuple[str, list[Entry]]]:
        ids: dict[Any, Any] = {
            key: after if after not in ("", "0") else "0-0" for key, after in streams.items()
        }
        block_ms = max(1, int(min(timeout, MAX_BLOCK_SECONDS) * 1000))
        try:
            result: Any = self._blocking.xread(ids, count=count, block=block_ms)
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        return [
            (str(key), [(entry_id, dict(fields)) for entry_id, fields in rows])
            for key, rows in result or []
        ]

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]:
        pubsub = self._blocking.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel)
            while not stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    yield str(message["data"])
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc
        finally:
            pubsub.close()

    def ping(self) -> None:
        try:
            self._client.ping()
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def command(self, *args: str | int) -> Any:
        try:
            return self._client.execute_command(*args)
        except _DOWN as exc:
            raise UnavailableError("redis is unavailable") from exc

    def close(self) -> None:
        self._client.close()
        self._blocking.close()
