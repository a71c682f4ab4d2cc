"""The Upstash REST stand-in's fault switch: the answers the real service gives when it cannot
serve a request, so that tests see what production would.

- `limit`: 400 `{"error": "ERR max daily request limit exceeded. ..."}`. The text is Upstash's
  (upstash/docs `redis/troubleshooting/max_daily_request_limit.mdx`, with the detail clients
  quote, e.g. wotschofsky/domain-digger#36). The REST API answers a command that "is rejected or
  fails" with 400 and a single `error` field, and lists no other status for it
  (`redis/features/restapi.mdx`, "HTTP Codes" and "Response"); a discarded transaction answers
  the same single error.
- `edge`: 502 with an HTML body, as the proxy in front of a database answers when it cannot reach
  it. The official TypeScript SDK has an error of its own for a non-JSON error body
  (`UpstashJSONParseError`, upstash/redis-js `packages/redis/pkg/http.ts`); the Python SDK
  fails to decode it.
- `hang`: no answer until the client gives up. The request is held until the fault is cleared
  or `hang_seconds` pass, then answered 504; the command never runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flask import Response

FAULT_KINDS = ("limit", "edge", "hang")
DAILY_LIMIT_ERROR = (
    "ERR max daily request limit exceeded. Limit: 10000, Usage: 10000. See "
    "https://upstash.com/docs/redis/troubleshooting/max_daily_request_limit for details"
)
_SHA = re.compile(r"[0-9a-f]{40}")
_EDGE_HTML = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Fault:
    """What the stand-in answers instead of serving a request, until the switch is cleared.

    `script` (a script's SHA-1) limits the fault to requests that run that script: an EVAL of
    its source or an EVALSHA of its sha; `command` (a command name, such as XADD) to requests
    that send that command. `times` limits it to that many requests. Raises ValueError for an
    unknown kind, a malformed sha or command name, or a count below 1.
    """

    kind: str
    script: str | None = None
    times: int | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if self.script is not None and not _SHA.fullmatch(self.script):
            raise ValueError("script must be a script's SHA-1 in lowercase hex")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1")
        if self.command is not None and not self.command.isalpha():
            raise ValueError("command must be a command name")

    @classmethod
    def from_json(cls, body: Any) -> Fault:
        """A fault from its JSON form; raises ValueError when the body does not describe one."""
        if not isinstance(body, dict) or set(body) - {"kind", "script", "times", "command"}:
            raise ValueError('a fault is {"kind", "script"?, "times"?, "command"?}')
        times = body.get("times")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError("times must be an integer")
        command = body.get("command")
        if command is not None and not isinstance(command, str):
            raise ValueError("command must be a command name")
        return cls(str(body.get("kind")), body.get("script"), times, command)


Command = Sequence[str | bytes]


class FaultSwitch:
    """The stand-in's current fault, shared by its request threads."""

    def __init__(self, hang_seconds: float = 60.0) -> None:
        self.hang_seconds = hang_seconds
        self.hits = 0
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._left: int | None = None
        self._released = threading.Event()

    def set(self, fault: Fault | None) -> None:
        """Answer with `fault` from now on (None: serve normally). Releases held requests."""
        with self._lock:
            self._fault = fault
            self._left = fault.times if fault else None
            self._released.set()
            self._released = threading.Event()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            fault = asdict(self._fault) if self._fault else None
            return {"fault": fault, "left": self._left, "hits": self.hits}

    def take(self, commands: list[Command]) -> tuple[Fault, threading.Event] | None:
        """The fault this request meets, if any (counted against `times`)."""
        with self._lock:
            fault = self._fault
            if fault is None or not _matches(fault, commands):
                return None
            self.hits += 1
            if self._left is not None:
                self._left -= 1
                if self._left <= 0:
                    self._fault, self._left = None, None
            return fault, self._released

    def answer(self, fault: Fault, released: threading.Event) -> Response:
        """The service's answer to a request that met `fault`."""
        if fault.kind == "limit":
            return Response(
                json.dumps({"error": DAILY_LIMIT_ERROR}), status=400, mimetype="application/json"
            )
        if fault.kind == "hang":
            released.wait(self.hang_seconds)
            return _html(504, "Gateway Time-out")
        return _html(502, "Bad Gateway")


def _html(code: int, reason: str) -> Response:
    return Response(_EDGE_HTML.format(code=code, reason=reason), status=code, mimetype="text/html")


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _matches(fault: Fault, commands: list[Command]) -> bool:
    if fault.command is not None:
        wanted = fault.command.upper()
        return any(command and _text(command[0]).upper() == wanted for command in commands)
    if fault.script is None:
        return True
    for command in commands:
        if len(command) < 2:
            continue
        name, first = _text(command[0]).upper(), command[1]
        if name == "EVALSHA" and _text(first).lower() == fault.script:
            return True
        raw = first.encode() if isinstance(first, str) else bytes(first)
        if name == "EVAL" and hashlib.sha1(raw).hexdigest() == fault.script:  # noqa: S324
            return True
    return False
