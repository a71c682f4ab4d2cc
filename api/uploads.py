"""Vercel function: a signed upload URL for one image (`POST /api/uploads`).

The image itself goes from the client straight to Supabase Storage (PUT to `signed_url`, or
supabase-js `uploadToSignedUrl(path, token, file)`), never through a function body, which
Vercel caps at 4.5 MB. The job's input then names it: `{"image": {"path": <path>}}`.
"""

from __future__ import annotations

from flask import Response, jsonify

from api._common import create_app, current_user, json_body, producer
from lib.errors import UnavailableError
from lib.images import count_upload, new_upload

app = create_app(__name__)


@app.post("/api/uploads")
def create_upload() -> tuple[Response, int]:
    user_id = current_user()
    body = json_body()
    service = producer()
    if service.storage is None:
        raise UnavailableError("image uploads need Storage (STORAGE_URL or SUPABASE_URL)")
    settings = service.settings
    uploaded = new_upload(
        settings,
        service.storage,
        user_id,
        body,
        count=lambda path: count_upload(service.state, user_id, settings.uploads_per_hour, path),
    )
    return jsonify(uploaded), 201
