"""Vercel function: the reconciler (`POST /api/reconcile`), called by a QStash schedule.

The schedule (RECONCILE_CRON; created by `scripts/deploy`, and by the dev stack) delivers a
signed message here like any other: the `Upstash-Signature` is verified with the worker's own
receiver code (lib.queue.receiver: both signing keys, body hash, exp/nbf, and `sub` equal to
PRODUCER_URL/api/reconcile), and its `jti` is accepted once. It runs on Vercel, so jobs are
healed even when every worker is down (lib/reconcile.py). It imports nothing worker-only.
"""

from __future__ import annotations

import logging

from flask import Response, jsonify, request

from api._common import create_app, error_response, producer
from lib import config
from lib.errors import AppError
from lib.models import ErrorCode
from lib.queue.receiver import InvalidSignature, Replayed, verify_request

log = logging.getLogger("cs.reconcile")

# A schedule's body is what `scripts/deploy` gives it (none); anything larger is refused.
MAX_BODY_BYTES = 4096

app = create_app(__name__)


def _refuse(message: str) -> Response:
    return error_response(ErrorCode.UNAUTHORIZED, message, 401)


@app.post("/api/reconcile")
def reconcile() -> Response:
    settings = config.settings("api")
    url = settings.reconcile_url
    if not url:
        return error_response(ErrorCode.UNAVAILABLE, "PRODUCER_URL is not set", 503)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return error_response(ErrorCode.PAYLOAD_TOO_LARGE, "the body is too large", 413)
    try:
        verify_request(
            request.headers.get("Upstash-Signature"),
            lambda: request.get_data(cache=False)[: MAX_BODY_BYTES + 1],
            keys=settings.signing_keys,
            url=url,
            clock_tolerance=settings.qstash_clock_tolerance_seconds,
            # The services are built only for a genuine signature.
            first_use=lambda jti, seconds: producer().state.first_use(jti, seconds),
        )
        from lib.reconcile import Reconciler

        service = producer()
        summary = Reconciler(
            settings, service.store, service.state, service.publisher, storage=service.storage
        ).run()
    except Replayed:
        log.warning("rejected a replayed reconcile signature")
        return _refuse("this Upstash-Signature was already used")
    except InvalidSignature as exc:
        log.warning(
            "rejected a reconcile call with an invalid signature", extra={"reason": str(exc)}
        )
        return _refuse("invalid Upstash-Signature")
    except AppError as exc:
        # 503 without Retry-After: the schedule's message is retried with QStash's backoff,
        # and the next tick runs anyway.
        log.warning("reconcile failed", extra={"code": exc.code})
        return error_response(exc.code, exc.message, 503)
    counts = summary.as_dict()
    log.info("reconciled", extra=counts)
    return jsonify(counts)
