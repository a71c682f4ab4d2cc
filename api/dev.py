"""Dev only: mint an access token for a dev user (`POST /api/dev/token`), for the demo page.

It answers 404 to everything unless `APP_ENV=development` and `SUPABASE_JWT_SECRET` is the public
Supabase local default: a token minted here is signed with that public secret, so it is only
accepted by a producer that verifies with it. Keep this file out of deployments (`.vercelignore`).
"""

from __future__ import annotations

import uuid

from flask import Response, jsonify, request

from api._common import create_app, json_body
from lib import config
from lib.auth import mint_access_token
from lib.errors import InputError, NotFoundError

TOKEN_TTL_SECONDS = 3600

app = create_app(__name__)


def _enabled() -> bool:
    settings = config.settings("api")
    return settings.app_env == "development" and settings.supabase_jwt_secret == (
        config.DEV_JWT_SECRET
    )


@app.before_request
def _dev_only() -> None:
    if not _enabled():
        raise NotFoundError("not found")


@app.post("/api/dev/token")
def token() -> Response:
    """Body (optional): `{"user_id": "<uuid>"}`; a new user id when absent."""
    body = json_body() if request.content_length else {}
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object", details={"body": "an object"})
    raw = body.get("user_id")
    if raw is None:
        user_id = str(uuid.uuid4())
    else:
        try:
            user_id = str(uuid.UUID(str(raw)))
        except ValueError:
            raise InputError("invalid user_id", details={"user_id": "a UUID"}) from None
    access = mint_access_token(
        user_id,
        config.DEV_JWT_SECRET,
        ttl=TOKEN_TTL_SECONDS,
        email=f"dev-{user_id[:8]}@example.test",
    )
    return jsonify(
        {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": TOKEN_TTL_SECONDS,
            "user_id": user_id,
        }
    )
