"""The Storage stand-in's model: buckets and their limits, the app's state, Storage's error shape,
and the checks every route makes (the service key, the bucket, the object's name and path)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from flask import request

EXTENSION = "storage_standin"
UPLOAD_EXPIRES_IN = 7200  # seconds: "valid for 2 hours" (createSignedUploadUrl's docs)
_NAME = re.compile(r"^[\w!\-.*'() &$@=;:+,?/]{1,1024}$")


@dataclass(frozen=True)
class Bucket:
    """A bucket's limits, as `POST /bucket` sets them (file_size_limit, allowed_mime_types)."""

    id: str
    file_size_limit: int | None = None
    allowed_mime_types: tuple[str, ...] = ()

    def allows(self, mime: str) -> bool:
        if not self.allowed_mime_types:
            return True
        base = mime.split(";", 1)[0].strip().lower()
        return any(
            base == allowed or (allowed.endswith("/*") and base.startswith(allowed[:-1]))
            for allowed in self.allowed_mime_types
        )


@dataclass
class StorageState:
    """The app's state (in `app.extensions`): where objects live, the secret, the buckets."""

    root: Path
    secret: str
    buckets: dict[str, Bucket]
    max_file_size: int
    upload_expires_in: int = UPLOAD_EXPIRES_IN
    uploads: int = field(default=0)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class StorageError(Exception):
    """An answer in Storage's error shape."""

    def __init__(self, status: str, code: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.error = status, code, message, error or code


def not_found() -> StorageError:
    return StorageError("404", "NoSuchKey", "Object not found", "not_found")


def current_state() -> StorageState:
    from flask import current_app

    state: StorageState = current_app.extensions[EXTENSION]
    return state


def require_service_role(state: StorageState) -> None:
    """The caller's key must be a service-role JWT signed with the secret."""
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not token:
        raise StorageError(
            "400", "InvalidJWT", "headers must have required property 'authorization'"
        )
    try:
        claims = jwt.decode(
            token, state.secret, algorithms=["HS256"], options={"verify_aud": False}
        )
    except jwt.InvalidTokenError as exc:
        raise StorageError("400", "InvalidJWT", str(exc) or "Invalid JWT") from None
    if claims.get("role") != "service_role":
        raise StorageError("403", "AccessDenied", "new row violates row-level security policy")


def find_bucket(state: StorageState, bucket_id: str) -> Bucket:
    bucket = state.buckets.get(bucket_id)
    if bucket is None:
        raise StorageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found")
    return bucket


def object_path(state: StorageState, bucket: Bucket, name: str) -> Path:
    if not _NAME.match(name) or any(part in ("", ".", "..") for part in name.split("/")):
        raise StorageError("400", "InvalidKey", f"Invalid key: {name}")
    return state.root / bucket.id / name


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(path.name + ".meta.json").read_text())
