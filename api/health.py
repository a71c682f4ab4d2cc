"""Vercel function: liveness, and with `?deep=1` a check of each dependency (`/api/health`).

The endpoint is public (monitors call it without credentials), and a deep check reaches Redis,
the database and Storage: each a request of a service billed per request. So an instance runs
at most one deep check per HEALTH_CACHE_SECONDS (10) and answers every caller in between with
that check's result and its age (`age_s`); callers that arrive while a check runs wait for it
rather than starting their own. A flood of `?deep=1` then costs each dependency one request per
instance per 10 s, while a monitor calling every minute always sees a fresh check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request

from api._common import create_app, producer

app = create_app(__name__)


def _check(fn: Callable[[], object]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _run_checks() -> dict[str, dict[str, object]]:
    service = producer()
    checks = {"redis": _check(service.state.ping), "db": _check(service.store.ping)}
    if service.storage is not None:  # image input is configured (STORAGE_URL or SUPABASE_URL)
        checks["storage"] = _check(service.storage.ping)
    return checks


class DeepChecks:
    """The latest deep check of this instance, run again once older than `ttl` seconds
    (HEALTH_CACHE_SECONDS unless given); one at a time (the lock is held while it runs, so
    concurrent callers share it)."""

    def __init__(
        self, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._checks: dict[str, dict[str, object]] | None = None
        self._at = 0.0

    def latest(self) -> tuple[dict[str, dict[str, object]], float]:
        """The checks and their age in seconds."""
        if self.ttl is None:
            self.ttl = producer().settings.health_cache_seconds
        with self._lock:
            if self._checks is None or self.clock() - self._at >= self.ttl:
                self._checks = _run_checks()
                self._at = self.clock()
            return self._checks, self.clock() - self._at


deep_checks = DeepChecks()


@app.get("/api/health")
def health() -> tuple[Response, int]:
    if request.args.get("deep") not in ("1", "true"):
        return jsonify({"ok": True}), 200
    checks, age = deep_checks.latest()
    ok = all(c["ok"] for c in checks.values())
    body: dict[str, Any] = {"ok": ok, "checks": checks, "age_s": round(age, 1)}
    return jsonify(body), 200 if ok else 503
