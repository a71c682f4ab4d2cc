"""A WSGI wrapper for the local stand-ins of paid services: a per-request delay, and a count.

Loopback answers in well under a millisecond; Upstash, Supabase and QStash answer from another
data centre. `delay_ms` adds that distance to every request (`STANDIN_DELAY_MS` for the stand-ins'
command lines; 0 by default), so a benchmark feels each sequential round trip the way a user in
production does. `requests` lists each request's path and its start and end times, so a test can
count a submit's round trips and check that they ran one after another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ENV_DELAY = "STANDIN_DELAY_MS"
PACING = "pacing"  # the key of a stand-in's `Paced` in `app.extensions`


@dataclass(frozen=True)
class Seen:
    """One request the wrapped server received: its path, and when it began and was answered."""

    path: str
    started: float
    ended: float


@dataclass
class Paced:
    """Wraps a WSGI app: sleeps `delay_ms` before each request and records it in `requests`."""

    app: Any
    delay_ms: float = 0.0
    requests: list[Seen] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.monotonic()
        if self.delay_ms > 0:
            time.sleep(self.delay_ms / 1000)
        path = str(environ.get("PATH_INFO", ""))
        streamed: list[bool] = []

        def started_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            streamed.append(any(v.startswith("text/event-stream") for _, v in headers))
            return start_response(status, headers, *exc)

        body = self.app(environ, started_response)
        if streamed and streamed[0]:
            # An event stream's round trip is its opening: recorded once its headers are ready.
            self._record(Seen(path, started, time.monotonic()))
            return body
        # Recorded before the client can read the answer, so the next request it sends always
        # begins after this one's end.
        try:
            answer = list(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        self._record(Seen(path, started, time.monotonic()))
        return answer

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def count(self) -> int:
        """How many requests have been answered so far."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Seen]:
        """The requests answered after the first `mark` ones."""
        with self._lock:
            return list(self.requests[mark:])
