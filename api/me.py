"""Vercel function: the caller's coins, free jobs left today and active jobs (`/api/me`)."""

from __future__ import annotations

from flask import Response, jsonify

from api._common import create_app, current_user, producer

app = create_app(__name__)


@app.get("/api/me")
def me() -> Response:
    return jsonify(producer().me(current_user()).model_dump())
