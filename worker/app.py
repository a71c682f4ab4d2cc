"""The worker: the QStash delivery target. Flask, run by gunicorn (worker/gunicorn.conf.py)."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from lib import config, logs, tracing
from lib.errors import AppError
from lib.executor import Executor, Outcome
from lib.queue.receiver import InvalidSignature, verify_body, verify_token

log = logging.getLogger("cs.worker")

# A delivery body is about 150 bytes and a failure callback a few KiB (QStash's payload carries
# our short answer and the source body, base64). Anything larger is refused: by its
# Content-Length before a byte is read, and a chunked body as soon as it passes the cap.
MAX_BODY_BYTES = 64 * 1024


def _respond(outcome: Outcome) -> Response:
    response = jsonify(outcome.body)
    response.status_code = outcome.status
    response.headers.update(outcome.headers)
    return response


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": None}})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _outage(exc: AppError) -> Response:
    """503 without Retry-After: QStash then spaces the retries by its own backoff (12 s,
    2 m 28 s, 30 m 8 s, ...), where a Retry-After would replace it and still use up a retry."""
    return _error(503, exc.code, exc.message)


def _int_header(name: str) -> int:
    try:
        return max(0, int(request.headers.get(name, "0")))
    except ValueError:
        return 0


def _delivery(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(k), str) for k in ("job_id", "user_id", "tier")
    ):
        return None
    return payload


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the worker app. `test_config` overrides settings (tests); services may be
    injected as `executor`, whose store and Redis errors are then counted in /metrics too.

    Raises ConfigError when tracing is enabled without the `otel` extra installed."""
    from lib.metrics import AdmissionCollector, Metrics, count_errors

    overrides = dict(test_config or {})
    executor: Executor | None = overrides.pop("executor", None)
    settings = config.load("worker", **overrides) if overrides else config.settings("worker")
    logs.setup(settings.log_level, settings.log_format)
    tracing.setup(settings)
    if executor is None:
        from lib import state, store
        from lib.llm import LLM

        executor = Executor(
            settings,
            store.for_worker(settings),
            state.from_settings(settings),
            LLM(settings),
            Metrics(),
        )
        executor.start_sweeper()
    if executor.metrics is not None:
        count_errors(executor.store, executor.state)
    app = Flask(__name__)
    # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without a word (it truncates):
    # one byte more than the cap lets `_read_body` tell a body at the cap from one over it.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions["executor"] = executor

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        return _error(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")

    _delivery_routes(app, executor, settings)
    _health_routes(
        app, executor, AdmissionCollector(executor.state, settings.metrics_redis_refresh_seconds)
    )
    return app


def _read_body() -> bytes:
    """The request body, at most MAX_BODY_BYTES. Raises RequestEntityTooLarge (413) past it."""
    body = request.get_data(cache=False)
    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return body


def _verified(executor: Executor, settings: Any, url: str) -> bytes | Response:
    """The body of a genuine, first-seen delivery to `url`, or the answer that refuses it.

    Everything that needs no body is checked before a byte of it is read: the size by
    Content-Length, then the signature (HMAC, issuer, destination, expiry). The body is read up
    to the cap, its hash checked, and last the signature's `jti` is recorded, so a captured
    delivery cannot be replayed while its signature is still valid."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    tolerance = settings.qstash_clock_tolerance_seconds
    try:
        claims = verify_token(
            request.headers.get("Upstash-Signature"),
            keys=settings.signing_keys,
            url=url,
            clock_tolerance=tolerance,
        )
        body = _read_body()
        verify_body(claims, body)
    except InvalidSignature as exc:
        log.warning(
            "rejected a delivery with an invalid signature",
            extra={"path": url, "reason": str(exc)},
        )
        return _error(401, "unauthorized", "invalid Upstash-Signature")
    try:
        first = executor.state.first_use(claims.jti, claims.exp - int(time.time()) + tolerance)
    except AppError as exc:
        log.warning("could not check the signature for replay", extra={"code": exc.code})
        return _outage(exc)
    if not first:
        # QStash sends a JWT "with each request", living 5 minutes (upstash.com/docs/qstash/
        # features/security), so every attempt has its own jti and only a replay repeats one.
        # 401, as for any bad signature: a retry by QStash itself carries a fresh signature.
        log.warning("rejected a replayed delivery signature", extra={"path": url})
        return _error(401, "unauthorized", "this Upstash-Signature was already used")
    return body


def _delivery_routes(app: Flask, executor: Executor, settings: Any) -> None:
    def verified(url: str) -> bytes | Response:
        return _verified(executor, settings, url)

    @app.post("/v1/execute")
    def execute() -> Response:
        body = verified(settings.execute_url)
        if isinstance(body, Response):
            return body
        payload = _delivery(body)
        if payload is None:
            return _error(
                489,
                "invalid_input",
                "malformed delivery body",
                {"Upstash-NonRetryable-Error": "true"},
            )
        # Upstash-Retried is not signed: it is informational (logs, traces) only. Whether this is
        # the last attempt comes from the job's own attempt count against the signed `retries`.
        retried = _int_header("Upstash-Retried")
        max_retries = int(payload.get("retries", settings.job_retries))
        with logs.job_scope(payload["job_id"], user_id=payload["user_id"]):
            try:
                outcome = executor.execute(
                    payload["job_id"],
                    payload["user_id"],
                    payload["tier"],
                    retried=retried,
                    max_retries=max_retries,
                )
            except AppError as exc:  # Redis or the DB is down: let the broker retry later
                log.warning("delivery failed", extra={"code": exc.code})
                return _outage(exc)
        return _respond(outcome)

    @app.post("/v1/failed")
    def failed() -> Response:
        body = verified(settings.failed_url)
        if isinstance(body, Response):
            return body
        try:
            callback = json.loads(body)
            source = _delivery(base64.b64decode(callback.get("sourceBody") or ""))
        except (ValueError, TypeError, AttributeError):
            source = None
        if source is None:
            log.warning("failure callback without a usable source body")
            return jsonify({"ignored": True})
        reason = (
            f"delivery failed after {callback.get('retried', 0)} retries "
            f"(last status {callback.get('status')})"
        )
        with logs.job_scope(source["job_id"], user_id=source["user_id"]):
            try:
                outcome = executor.fail_delivery(
                    source["job_id"], source["user_id"], source["tier"], reason
                )
            except AppError as exc:
                log.warning("failure callback failed", extra={"code": exc.code})
                return _outage(exc)
        return _respond(outcome)


def _health_routes(app: Flask, executor: Executor, admission: Any) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True, "draining": executor.draining, "running": executor.running()})

    @app.get("/readyz")
    def readyz() -> Response:
        # The answer says only ready or not: which dependency is down is for the operator's
        # log, not for whoever can reach the worker's public URL.
        down = []
        for name, ping in (("redis", executor.state.ping), ("db", executor.store.ping)):
            try:
                ping()
            except Exception:
                down.append(name)
        if down:
            log.warning("not ready: a dependency is down", extra={"down": down})
        ok = not down and not executor.draining
        response = jsonify({"ok": ok})
        response.status_code = 200 if ok else 503
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        from lib.metrics import render

        text, content_type = render(admission)
        return Response(text, content_type=content_type)
