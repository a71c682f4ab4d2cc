"""Vercel function: the caller's coins, free jobs left today and active jobs, and the URL of
their user stream (`/api/me`)."""

from __future__ import annotations

from flask import Response, jsonify

from api._common import create_app, current_identity, holds_credit, producer
from lib.models import Me

app = create_app(__name__)


@app.get("/api/me")
def me() -> Response:
    who = current_identity()
    service = producer()
    if not holds_credit(who):  # no coins, no free jobs, and no grant row written for them
        me = Me(user_id=who.user_id, coins=0, free_jobs_left_today=0, active_jobs=0)
    else:
        me = service.me(who.user_id)
    # The user stream of all the caller's jobs (GET /api/events), with a user-scoped token.
    token = service.verifier.mint_user_stream_token(who.user_id)
    return jsonify({**me.model_dump(), "events_url": f"/api/events?token={token}"})
