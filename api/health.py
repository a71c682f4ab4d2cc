"""Vercel function: liveness, and with `?deep=1` a check of each dependency (`/api/health`)."""

from __future__ import annotations

import time

from flask import Response, jsonify, request

from api._common import create_app, producer

app = create_app(__name__)


def _check(fn: object) -> dict[str, object]:
    started = time.perf_counter()
    try:
        fn()  # type: ignore[operator]
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@app.get("/api/health")
def health() -> tuple[Response, int]:
    if request.args.get("deep") not in ("1", "true"):
        return jsonify({"ok": True}), 200
    service = producer()
    checks = {"redis": _check(service.state.ping), "db": _check(service.store.ping)}
    if service.storage is not None:  # image input is configured (STORAGE_URL or SUPABASE_URL)
        checks["storage"] = _check(service.storage.ping)
    ok = all(c["ok"] for c in checks.values())
    return jsonify({"ok": ok, "checks": checks}), 200 if ok else 503
