"""Vercel function: the Server-Sent-Events stream of one job (`/api/jobs/<id>/events`).

It also answers `/api/events?id=<id>`, the form `vercel.json`'s rewrite gives the same request
when Vercel routes with the rewritten path (see api/_local.py).
"""

from __future__ import annotations

from flask import Response, request, stream_with_context

from api._common import bearer, create_app, producer, warm
from lib.errors import AuthError, NotFoundError
from lib.service import validate_cursor, validate_job_id

app = create_app(__name__)


@app.get("/api/events")
def rewritten() -> Response:
    job_id = request.args.get("id")
    if job_id is None:
        raise NotFoundError("not found: the stream of a job is /api/jobs/<id>/events")
    return events(job_id)


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
    return Response(
        stream_with_context(frames),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )
