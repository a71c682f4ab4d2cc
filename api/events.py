"""Vercel function: the Server-Sent-Events streams: one job's (`/api/jobs/<id>/events`) and all
of the caller's jobs in one (`/api/events`, lib/userstream.py).

`/api/events?id=<id>` is one job's: the form `vercel.json`'s rewrite gives the job's request
when Vercel routes with the rewritten path (see api/_local.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Response, request, stream_with_context

from api._common import bearer, create_app, producer, warm
from lib.errors import AuthError
from lib.service import validate_cursor, validate_job_id

app = create_app(__name__)


@app.get("/api/events")
def user_events() -> Response:
    """All the caller's active jobs in one stream, or (`?id=`, the rewritten form of
    `/api/jobs/<id>/events`) one job's."""
    job_id = request.args.get("id")
    if job_id is not None:
        return events(job_id)
    service = producer()
    token = request.args.get("token")
    if token:
        user_id = service.verifier.user_stream_user(token)
    elif request.headers.get("Authorization"):
        user_id = service.verifier.user_id(bearer())
    else:
        raise AuthError("pass the user stream token (?token=) or an Authorization header")
    after = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    frames = service.user_stream(user_id, after or None)
    next(frames)  # the first frame: a bad Last-Event-ID answers 400 before the stream begins
    return _sse(service.hold_stream(user_id, _prepend("retry: 1000\n\n", frames)))


@app.get("/api/jobs/<job_id>/events")
def events(job_id: str) -> Response:
    job_id = validate_job_id(job_id)
    warm("state")  # while the token is checked and the job read
    service = producer()
    token = request.args.get("token")
    if token:
        user_id = service.verifier.stream_user(token, job_id)
    elif request.headers.get("Authorization"):
        user_id = service.verifier.user_id(bearer())
    else:
        raise AuthError("pass the stream token (?token=) or an Authorization header")
    job = service.get(job_id, user_id)  # 404 for another user's job
    service.heal_stream(job)
    after = validate_cursor(
        request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    )
    frames = service.hold_stream(user_id, service.stream(job_id, after))  # 429 stream_limit
    return _sse(frames)


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _sse(frames: Iterator[str]) -> Response:
    return Response(
        stream_with_context(frames),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )
