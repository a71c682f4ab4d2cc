"""The Storage stand-in's signed uploads: `POST /object/upload/sign/...` signs an upload URL
with the JWT secret, `PUT` on it stores the file (scripts/fakes/storage_standin.py lists what
it refuses)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from flask import request

from scripts.fakes.storage_model import (
    Bucket,
    StorageError,
    StorageState,
    current_state,
    find_bucket,
    object_path,
    require_service_role,
)


def sign_upload(bucket_id: str, name: str) -> dict[str, str]:
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
    object_path(state, bucket, name)
    now = int(time.time())
    claims = {
        "url": f"{bucket.id}/{name}",
        "upsert": request.headers.get("x-upsert") == "true",
        "scope": "upload",
        "iat": now,
        "exp": now + state.upload_expires_in,
    }
    token = jwt.encode(claims, state.secret, algorithm="HS256")
    return {"url": f"/object/upload/sign/{bucket.id}/{name}?token={token}", "token": token}


def _verified_upload(state: StorageState, bucket: Bucket, name: str) -> dict[str, Any]:
    token = request.args.get("token", "")
    if not token:
        raise StorageError(
            "400", "InvalidRequest", "querystring must have required property 'token'"
        )
    try:
        claims = jwt.decode(
            token, state.secret, algorithms=["HS256"], options={"verify_exp": False}
        )
    except jwt.InvalidTokenError as exc:
        raise StorageError("400", "InvalidJWT", str(exc) or "Invalid JWT") from None
    if claims.get("scope") != "upload":
        raise StorageError("400", "InvalidSignature", "Token is not scoped for upload")
    if claims.get("url") != f"{bucket.id}/{name}":
        raise StorageError("400", "InvalidSignature", "Invalid signature")
    if int(claims.get("exp", 0)) < time.time():
        raise StorageError("400", "ExpiredToken", "The provided token has expired.")
    return claims


def _received_file(limit: int) -> tuple[bytes, str]:
    """The uploaded bytes (at most `limit` + 1) and their declared type."""
    if request.mimetype == "multipart/form-data":
        part = request.files.get("file")
        if part is None:
            raise StorageError("400", "InvalidRequest", "Missing file")
        return part.stream.read(limit + 1), part.mimetype or "application/octet-stream"
    stream = request.environ["wsgi.input"]
    remaining = min(request.content_length or 0, limit + 1)
    data = b""
    while remaining > 0:
        chunk = stream.read(min(65536, remaining))
        if not chunk:
            break
        data += chunk
        remaining -= len(chunk)
    return data, request.headers.get("Content-Type") or "application/octet-stream"


def upload(bucket_id: str, name: str) -> dict[str, str]:
    state = current_state()
    bucket = find_bucket(state, bucket_id)
    path = object_path(state, bucket, name)
    claims = _verified_upload(state, bucket, name)
    limit = min(bucket.file_size_limit or state.max_file_size, state.max_file_size)
    if (request.content_length or 0) > limit + 64 * 1024:  # multipart framing aside
        raise StorageError(
            "413",
            "EntityTooLarge",
            "The object exceeded the maximum allowed size",
            "Payload too large",
        )
    data, mime = _received_file(limit)
    if len(data) > limit:
        raise StorageError(
            "413",
            "EntityTooLarge",
            "The object exceeded the maximum allowed size",
            "Payload too large",
        )
    if not bucket.allows(mime):
        raise StorageError(
            "415", "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type"
        )
    if path.exists() and not claims.get("upsert"):
        raise StorageError("409", "Duplicate", "The resource already exists", "Duplicate")
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    meta = {
        "id": str(uuid.uuid4()),
        "mimetype": mime,
        "size": len(data),
        "eTag": '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"',
        "created_at": now,
    }
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    path.with_name(path.name + ".meta.json").write_text(json.dumps(meta))
    tmp.replace(path)  # the object appears whole, or not at all
    state.uploads += 1
    return {"Key": f"{bucket.id}/{name}"}
