"""Shared glue of the producer's Vercel functions (a leading `_` keeps this out of routing).

Each function file builds its Flask app with `create_app()` and declares only its routes. The
services are built once per process (a warm Vercel instance reuses them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from lib import config, logs
from lib.errors import AppError, AuthError
from lib.models import ErrorCode

if TYPE_CHECKING:  # imported on first use: a cold start pays only for what it serves
    from lib.auth import Identity, Verifier
    from lib.service import Producer

log = logging.getLogger("cs.api")

_HTTP_CODES = {
    400: ErrorCode.INVALID_INPUT,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}

# Sent on every answer, the demo page's included (vercel.json sets the same on Vercel): no page
# of ours may be framed (clickjacking), and no answer is sniffed into another media type.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}


class _OnFirstUse:
    """A service of the producer, built on its first use, once per process."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        with self._lock:
            # Stored on the instance, which then shadows this (non-data) descriptor.
            if self._name not in obj.__dict__:
                obj.__dict__[self._name] = self._build(obj.settings)
        return obj.__dict__[self._name]


def _store(settings: Any) -> Any:
    from lib import store

    # A short wait: when the database is down, a submit answers 503 fast.
    return store.from_settings(settings, pool_size=4, timeout=2.0)


def _state(settings: Any) -> Any:
    from lib import state

    return state.from_settings(settings)


def _publisher(settings: Any) -> Any:
    from lib.queue import producer as queue

    return queue.from_settings(settings)


def _storage(settings: Any) -> Any:
    if not settings.storage_api_url:
        return None
    from lib import storage

    return storage.from_settings(settings)


def _verifier(settings: Any) -> Any:
    from lib import auth

    return auth.from_settings(settings)


@cache
def producer() -> Producer:
    """The process-wide producer. Each service (store, Redis state, publisher, verifier) is
    built, and its SDK imported, on first use: `/api/me` never loads the QStash or Redis
    clients, and `/api/health` loads none of them."""
    from lib.service import Producer

    class LazyProducer(Producer):
        store = _OnFirstUse(_store)
        state = _OnFirstUse(_state)
        publisher = _OnFirstUse(_publisher)
        verifier = _OnFirstUse(_verifier)
        storage = _OnFirstUse(_storage)

        def __init__(self, settings: config.Settings) -> None:  # the services come lazily
            self.settings = settings

    return LazyProducer(config.settings("api"))


def warm(*services: str) -> None:
    """Start building these services of the producer in a background thread, if they are not
    built yet. A cold start's request then overlaps their imports and CA loads with its own
    work and first round trip, which wait on the network; the request waits for a service
    still being built when it reaches it (its first use takes the same lock), and a build that
    failed here is tried again, and raises, there."""
    service = producer()
    missing = [name for name in services if name not in vars(service)]
    if not missing:
        return

    def build() -> None:
        for name in missing:
            try:
                getattr(service, name)
            except Exception:  # noqa: S110 - the request's own first use raises it
                pass

    threading.Thread(target=build, name="warm-services", daemon=True).start()


def error_response(
    code: str, message: str, status: int, details: Any = None, retry_after: float | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details}})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return response


def secure(response: Response) -> Response:
    """Add SECURITY_HEADERS to an answer (an `after_request` hook)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def http_error(exc: HTTPException) -> Response:
    """A werkzeug HTTP error (404, 405, 413...) in the SPEC's error shape."""
    status = exc.code or 500
    code = _HTTP_CODES.get(status, ErrorCode.INTERNAL)
    response = error_response(code, exc.description or exc.name, status)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer token")
    return token.strip()


def verifier() -> Verifier:
    return producer().verifier


def current_user() -> str:
    """The caller's user id from `Authorization: Bearer <Supabase access token>`."""
    return verifier().user_id(bearer())


def current_identity() -> Identity:
    """The caller (user id, and whether anonymous) from the bearer token."""
    return verifier().identity(bearer())


def holds_credit(identity: Identity) -> bool:
    """Whether the caller gets coins and free jobs: anonymous users get none, and never reach
    the SQL that grants them, unless ALLOW_ANONYMOUS_USERS=true."""
    return identity.may_hold_credit(config.settings("api").allow_anonymous_users)


def create_app(name: str) -> Flask:
    """A Flask app with the SPEC's error shape, CORS and the body size limit."""
    settings = config.settings("api")
    logs.setup(settings.log_level, settings.log_format)
    app = Flask(name)
    # One byte over the limit: werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH
    # without an error, so `json_body` tells a body over the limit by that extra byte.
    app.config["MAX_BODY_BYTES"] = settings.max_body_bytes
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        return error_response(exc.code, exc.message, exc.status, exc.details, exc.retry_after)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        _discard_body()
        return error_response(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the body is larger than {settings.max_body_bytes} bytes",
            413,
        )

    app.register_error_handler(HTTPException, http_error)
    app.after_request(secure)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(ErrorCode.INTERNAL, "internal error", 500)

    @app.before_request
    def _clock() -> None:
        g.started = time.perf_counter()

    @app.before_request
    def _preflight() -> Response | None:
        if request.method == "OPTIONS":
            return Response(status=204)
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        # The handler's own time, for browsers' dev tools and for `make bench` (W3C Server-Timing).
        started = g.get("started")
        if started is not None:
            elapsed = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.2f}"
        origin = request.headers.get("Origin")
        if origin and (origin in settings.allowed_origins or "*" in settings.allowed_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = (
                "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
            )
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    return app


_DISCARD_LIMIT = 5 * 1024 * 1024  # Vercel refuses bodies over 4.5 MB before they reach us


def _discard_body() -> None:
    """Read and drop an oversized body (up to a bound), so the client, still sending, gets
    our 413 instead of a connection reset."""
    stream = request.environ.get("wsgi.input")
    remaining = min(request.content_length or 0, _DISCARD_LIMIT)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(65536, remaining))
        if not chunk:
            break
        remaining -= len(chunk)


def json_body() -> Any:
    """The request's JSON body. Raises 415 for another media type, 400 for malformed JSON."""
    from lib.errors import InputError

    if not request.mimetype or request.mimetype != "application/json":
        raise AppError(
            "send the body as application/json", code=ErrorCode.UNSUPPORTED_MEDIA_TYPE, status=415
        )
    # Read the body first, so a body over the limit (chunked too) is a 413, not "invalid JSON".
    if len(request.get_data(cache=True)) > current_app.config["MAX_BODY_BYTES"]:
        raise RequestEntityTooLarge()
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise InputError(
            "the body is nested too deeply", details={"body": "nested too deeply"}
        ) from None
    if body is None:
        raise InputError("the body is not valid JSON", details={"body": "malformed JSON"})
    return body
