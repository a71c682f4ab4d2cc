"""The worker: the QStash delivery target. Flask, run by gunicorn (worker/gunicorn.conf.py)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from lib import config, logs, tracing
from lib.boxes import Heartbeat
from lib.errors import AppError
from lib.executor import Executor
from lib.queue import wire
from lib.queue.receiver import InvalidSignature, Replayed, verify_request
from lib.sweeper import Sweeper
from lib.verdict import GiveUp, RetryAfter

log = logging.getLogger("cs.worker")

# A delivery body is about 150 bytes and a failure callback a few KiB (QStash's payload carries
# our short answer and the source body, base64). Anything larger is refused: by its
# Content-Length before a byte is read, and a chunked body as soon as it passes the cap.
MAX_BODY_BYTES = 64 * 1024


def _respond(answer: wire.Answer) -> Response:
    response = jsonify(answer.body)
    response.status_code = answer.status
    response.headers.update(answer.headers)
    return response


def _error(status: int, code: str, message: str) -> Response:
    return _respond(
        wire.Answer(status, {"error": {"code": code, "message": message, "details": None}})
    )


def _outage(exc: AppError) -> Response:
    """Redis or the database is down: retry by the broker's own backoff (no Retry-After)."""
    return _respond(wire.answer(RetryAfter(exc.code, exc.message)))


def _int_header(name: str) -> int:
    try:
        return max(0, int(request.headers.get(name, "0")))
    except ValueError:
        return 0


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the worker app. `test_config` overrides settings (tests); services may be
    injected as `executor`, whose store and Redis errors are then counted in /metrics too.

    Raises ConfigError when tracing is enabled without the `otel` extra installed."""
    from lib.metrics import AdmissionCollector, Metrics, count_errors

    overrides = dict(test_config or {})
    executor: Executor | None = overrides.pop("executor", None)
    overrides_publisher = overrides.pop("publisher", None)
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
            read_image=_image_reader(settings),
        )
        Sweeper(settings, executor.store, executor.state).start()
        # Announce this box to the producers (scale-out, lib/boxes.py).
        Heartbeat(settings, executor.state, executor.running, lambda: executor.draining).start()
    executor.start()
    detached = None
    if settings.execution_mode == "detached":
        from lib.detached import Detached
        from lib.queue.producer import from_settings as publisher_from_settings

        detached = Detached(executor, overrides_publisher or publisher_from_settings(settings))
    if executor.metrics is not None:
        count_errors(executor.store, executor.state)
    app = Flask(__name__)
    # werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH without a word (it truncates):
    # one byte more than the cap lets `_read_body` tell a body at the cap from one over it.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions["executor"] = executor
    app.extensions["detached"] = detached

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> Response:
        return _error(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")

    _delivery_routes(app, executor, settings, detached)
    _health_routes(
        app, executor, AdmissionCollector(executor.state, settings.metrics_redis_refresh_seconds)
    )
    return app


def _image_reader(settings: Any) -> Any:
    """Storage's download with the service key, for image jobs (None without Storage)."""
    if not settings.storage_api_url:
        return None
    from lib.storage import from_settings

    return from_settings(settings).download


def _read_body() -> bytes:
    """The request body, at most MAX_BODY_BYTES. Raises RequestEntityTooLarge (413) past it."""
    body = request.get_data(cache=False)
    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return body


def _verified(executor: Executor, settings: Any, url: str) -> bytes | Response:
    """The body of a genuine, first-seen delivery to `url`, or the answer that refuses it.

    The size is checked by Content-Length before anything else, then the signature before a
    byte of the body is read (lib.queue.receiver.verify_request), so a captured delivery cannot
    be replayed while its signature is still valid either."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    try:
        return verify_request(
            request.headers.get("Upstash-Signature"),
            _read_body,
            keys=settings.signing_keys,
            url=url,
            clock_tolerance=settings.qstash_clock_tolerance_seconds,
            first_use=executor.state.first_use,
        )
    except Replayed:
        # 401, as for any bad signature: a retry by QStash itself carries a fresh signature.
        log.warning("rejected a replayed delivery signature", extra={"path": url})
        return _error(401, "unauthorized", "this Upstash-Signature was already used")
    except InvalidSignature as exc:
        log.warning(
            "rejected a delivery with an invalid signature",
            extra={"path": url, "reason": str(exc)},
        )
        return _error(401, "unauthorized", "invalid Upstash-Signature")
    except AppError as exc:
        log.warning("could not check the signature for replay", extra={"code": exc.code})
        return _outage(exc)


def _delivery_routes(app: Flask, executor: Executor, settings: Any, detached: Any) -> None:
    @app.post("/v1/execute")
    def execute() -> Response:
        body = _verified(executor, settings, settings.execute_url)
        if isinstance(body, Response):
            return body
        delivery = wire.parse_delivery(body)
        if delivery is None:
            return _respond(wire.answer(GiveUp("invalid_input", "malformed delivery body")))
        try:
            return _respond(_execute(executor, delivery, settings.job_retries, detached))
        except AppError as exc:  # Redis or the DB is down: let the broker retry later
            log.warning("delivery failed", extra={"code": exc.code, "job_id": delivery.job_id})
            return _outage(exc)

    @app.post("/v1/failed")
    def failed() -> Response:
        body = _verified(executor, settings, settings.failed_url)
        if isinstance(body, Response):
            return body
        callback = wire.parse_failure_callback(body)
        if callback is None:
            log.warning("failure callback without a usable source body")
            return jsonify({"ignored": True})
        job_id, user_id, tier = callback.delivery[:3]
        with logs.job_scope(job_id, user_id=user_id):
            try:
                verdict = executor.fail_delivery(job_id, user_id, tier, callback.reason)
            except AppError as exc:
                log.warning("failure callback failed", extra={"code": exc.code})
                return _outage(exc)
        return _respond(wire.answer(verdict))


def _execute(
    executor: Executor, delivery: wire.Delivery, default_retries: int, detached: Any = None
) -> wire.Answer:
    """One delivery as one `job.attempt` span, every log line tagged with the job. Detached
    (EXECUTION_MODE=detached), it answers once the job is started (lib/detached.py).

    Upstash-Retried is not signed: it is informational (logs, traces) only. Whether this is the
    last attempt comes from the job's own attempt count against the signed `retries`."""
    retried = _int_header("Upstash-Retried")
    job_id, user_id, tier, retries = delivery[:4]
    max_retries = default_retries if retries is None else retries
    with (
        logs.job_scope(job_id, user_id=user_id, tier=tier),
        tracing.attempt_span(job_id, tier=tier, retried=retried),
    ):
        if detached is not None:
            message_id = request.headers.get("Upstash-Message-Id", "")[:100] or "none"
            verdict = detached.deliver(delivery, message_id, max_retries)
        else:
            verdict = executor.execute(job_id, user_id, tier, max_retries=max_retries)
        answer = wire.answer(verdict)
        tracing.annotate(http_status=answer.status)
        return answer


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
