"""Vercel function: the caller's coins, free jobs left today and active jobs (`/api/me`)."""

from __future__ import annotations

from flask import Response, jsonify

from api._common import create_app, current_identity, holds_credit, producer
from lib.models import Me

app = create_app(__name__)


@app.get("/api/me")
def me() -> Response:
    who = current_identity()
    if not holds_credit(who):  # no coins, no free jobs, and no grant row written for them
        return jsonify(
            Me(user_id=who.user_id, coins=0, free_jobs_left_today=0, active_jobs=0).model_dump()
        )
    return jsonify(producer().me(who.user_id).model_dump())
