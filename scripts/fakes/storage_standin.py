"""Supabase Storage stand-in on the filesystem: the routes supabase-py's storage client calls.

`storage3.SyncStorageClient(url + "/storage/v1/", headers)` works against it unchanged
(supabase/supabase-py src/storage/src/storage3/_sync/file_api.py). It serves, as Storage does
(supabase/storage src/http/routes/object/*.ts):

- `POST /storage/v1/object/upload/sign/<bucket>/<path>` (the key): `{"url": "/object/upload/
  sign/<bucket>/<path>?token=<jwt>", "token"}`. The token is an HS256 JWT signed with the JWT
  secret, `{owner, url: "<bucket>/<path>", upsert, scope: "upload", iat, exp}`, valid for 2 hours
  (src/storage/object.ts `signUploadObjectUrl`).
- `PUT /storage/v1/object/upload/sign/<bucket>/<path>?token=` (no key): the file, as a multipart
  `file` part (what storage3 sends) or as the raw body. Refused: a bad signature, another scope,
  another object's token, an expired one (`verifyObjectSignature`); an existing object without
  upsert; a file over the bucket's (or the global) size limit; a declared type the bucket does
  not allow (Storage checks the declared type only, never the bytes). Answers `{"Key"}`.
- `GET /storage/v1/object[/authenticated]/<bucket>/<path>` (the key): the bytes, with
  `Accept-Ranges: bytes`; a `Range: bytes=a-b` gets 206 and `Content-Range`.
- `GET /storage/v1/object/info[/authenticated]/<bucket>/<path>` (the key): InfoRenderer's JSON.
- `POST /storage/v1/object/list/<bucket>` (the key), storage3's `list(path, options)`: body
  `{prefix, limit, offset, sortBy: {column, order}, search}`, `prefix` required, `limit` >= 1,
  `offset` >= 0, `sortBy.column` one of name/updated_at/created_at/last_accessed_at
  (src/http/routes/object/listObjects.ts). The prefix is a folder (src/storage/object.ts
  `searchObjects` appends `/`); answers its direct entries, a subfolder as `{name, id: null, ...}`.
- `DELETE /storage/v1/object/<bucket>` (the key), storage3's `remove(paths)`: body
  `{"prefixes": [names]}`, at least one (src/http/routes/object/deleteObjects.ts). Each prefix
  is an exact object name (the database's `deleteObjects`: `name = ANY($2)`), not a folder;
  names with no object are skipped. Answers 200 with the rows deleted (`[]` when none was).
- `GET /storage/v1/bucket/<id>` (the key), and `GET /storage/v1/status` for health checks.
- CORS for any origin, as Storage allows browsers to upload to a signed URL from any page.

The key is a JWT signed with the same secret whose `role` is `service_role` (row-level security
is not modelled, so other roles are refused). Errors are Storage's: HTTP 400 with the real status
in the body, `{"statusCode": "404", "code", "error", "message"}` (src/http/error-handler.ts,
src/internal/errors/codes.ts). Object contents are never logged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from flask import Flask, Response, request
from werkzeug.serving import make_server

from scripts.fakes.pacing import ENV_DELAY, PACING, Paced

log = logging.getLogger("storage_standin")

EXTENSION = "storage_standin"
UPLOAD_EXPIRES_IN = 7200  # seconds: "valid for 2 hours" (createSignedUploadUrl's docs)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
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
class _State:
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


def _not_found() -> StorageError:
    return StorageError("404", "NoSuchKey", "Object not found", "not_found")


def _state() -> _State:
    from flask import current_app

    state: _State = current_app.extensions[EXTENSION]
    return state


def _service_role(state: _State) -> None:
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


def _bucket(state: _State, bucket_id: str) -> Bucket:
    bucket = state.buckets.get(bucket_id)
    if bucket is None:
        raise StorageError("404", "NoSuchBucket", "Bucket not found", "Bucket not found")
    return bucket


def _object_path(state: _State, bucket: Bucket, name: str) -> Path:
    if not _NAME.match(name) or any(part in ("", ".", "..") for part in name.split("/")):
        raise StorageError("400", "InvalidKey", f"Invalid key: {name}")
    return state.root / bucket.id / name


def _meta(path: Path) -> dict[str, Any]:
    return json.loads(path.with_name(path.name + ".meta.json").read_text())


def sign_upload(bucket_id: str, name: str) -> dict[str, str]:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    _object_path(state, bucket, name)
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


def _verified_upload(state: _State, bucket: Bucket, name: str) -> dict[str, Any]:
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
    state = _state()
    bucket = _bucket(state, bucket_id)
    path = _object_path(state, bucket, name)
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


def download(bucket_id: str, name: str) -> Response:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    path = _object_path(state, bucket, name)
    if not path.is_file():
        raise _not_found()
    meta, data = _meta(path), path.read_bytes()
    headers = {"Accept-Ranges": "bytes", "ETag": meta["eTag"]}
    wanted = request.headers.get("Range")
    matched = _RANGE.match(wanted or "")
    if wanted and matched and (matched.group(1) or matched.group(2)):
        first, last = matched.groups()
        size = len(data)
        start = int(first) if first else max(0, size - int(last))
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size or start > end:
            raise StorageError("416", "InvalidRange", "The requested range is not satisfiable")
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Response(data[start : end + 1], 206, headers, mimetype=meta["mimetype"])
    return Response(data, 200, headers, mimetype=meta["mimetype"])


def info(bucket_id: str, name: str) -> dict[str, Any]:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    path = _object_path(state, bucket, name)
    if not path.is_file():
        raise _not_found()
    meta = _meta(path)
    return {
        "id": meta["id"],
        "name": name,
        "version": meta["id"],
        "bucket_id": bucket.id,
        "size": meta["size"],
        "content_type": meta["mimetype"],
        "cache_control": "max-age=3600",
        "etag": meta["eTag"],
        "metadata": {},
        "last_modified": meta["created_at"],
        "created_at": meta["created_at"],
    }


def _body(required: str) -> dict[str, Any]:
    """The JSON body, or Storage's answer to a body its route schema refuses (Fastify's
    validation error: HTTP 400, src/http/error-handler.ts)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or required not in body:
        raise StorageError("400", "Error", f"body must have required property '{required}'")
    return body


def _invalid(message: str) -> StorageError:
    return StorageError("400", "Error", message)


_SORT_COLUMNS = ("name", "updated_at", "created_at", "last_accessed_at")


def _list_options(body: dict[str, Any]) -> tuple[str, int, int, str, bool]:
    prefix, limit, offset = body["prefix"], body.get("limit", 100), body.get("offset", 0)
    sort = body.get("sortBy") or {"column": "name"}
    if not isinstance(prefix, str):
        raise _invalid("body/prefix must be string")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _invalid("body/limit must be >= 1")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise _invalid("body/offset must be >= 0")
    if not isinstance(sort, dict) or sort.get("column") not in _SORT_COLUMNS:
        raise _invalid("body/sortBy/column must be equal to one of the allowed values")
    if sort.get("order", "asc") not in ("asc", "desc"):
        raise _invalid("body/sortBy/order must be equal to one of the allowed values")
    return prefix, limit, offset, str(sort["column"]), sort.get("order") == "desc"


def list_objects(bucket_id: str) -> Response:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    prefix, limit, offset, column, descending = _list_options(_body("prefix"))
    folder = state.root / bucket.id / prefix.strip("/") if prefix.strip("/") else None
    root = folder or state.root / bucket.id
    if folder is not None:
        _object_path(state, bucket, prefix.strip("/"))  # no climbing out of the bucket
    entries: list[dict[str, Any]] = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir():
            entries.append(
                {
                    "name": child.name,
                    "id": None,
                    "updated_at": None,
                    "created_at": None,
                    "last_accessed_at": None,
                    "metadata": None,
                }
            )
        elif child.is_file() and not child.name.endswith((".meta.json", ".part")):
            meta = _meta(child)
            entries.append(
                {
                    "name": child.name,
                    "id": meta["id"],
                    "updated_at": meta["created_at"],
                    "created_at": meta["created_at"],
                    "last_accessed_at": meta["created_at"],
                    "metadata": {
                        "size": meta["size"],
                        "mimetype": meta["mimetype"],
                        "eTag": meta["eTag"],
                    },
                }
            )
    entries.sort(key=lambda e: (e[column] is not None, e[column] or ""), reverse=descending)
    return Response(json.dumps(entries[offset : offset + limit]), mimetype="application/json")


def delete_objects(bucket_id: str) -> Response:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    prefixes = _body("prefixes")["prefixes"]
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise _invalid("body/prefixes must be array")
    if not prefixes:
        raise _invalid("body/prefixes must NOT have fewer than 1 items")
    deleted = []
    for name in dict.fromkeys(prefixes):
        try:
            path = _object_path(state, bucket, name)
        except StorageError:
            continue  # matches no row (Storage does not check the names it deletes)
        if not path.is_file():
            continue  # no such row: Storage deletes nothing for it and says nothing
        meta = _meta(path)
        path.unlink()
        path.with_name(path.name + ".meta.json").unlink(missing_ok=True)
        deleted.append(
            {
                "bucket_id": bucket.id,
                "name": name,
                "id": meta["id"],
                "owner": None,
                "created_at": meta["created_at"],
                "updated_at": meta["created_at"],
                "last_accessed_at": meta["created_at"],
                "metadata": {"size": meta["size"], "mimetype": meta["mimetype"]},
            }
        )
    return Response(json.dumps(deleted), mimetype="application/json")


def bucket_info(bucket_id: str) -> dict[str, Any]:
    state = _state()
    _service_role(state)
    bucket = _bucket(state, bucket_id)
    # The columns getBucket selects (supabase/storage src/http/routes/bucket/getBucket.ts); a
    # bucket created with the service key has no owner (createBucket.ts: `request.owner`).
    return {
        "id": bucket.id,
        "name": bucket.id,
        "owner": None,
        "public": False,
        "created_at": state.started,
        "updated_at": state.started,
        "file_size_limit": bucket.file_size_limit,
        "allowed_mime_types": list(bucket.allowed_mime_types) or None,
    }


def create_app(
    root: str | Path,
    jwt_secret: str,
    buckets: Sequence[Bucket],
    *,
    max_file_size: int = 50 * 1024 * 1024,
    upload_expires_in: int = UPLOAD_EXPIRES_IN,
    delay_ms: float = 0.0,
) -> Flask:
    """The stand-in as a Flask app, storing objects under `root/<bucket>/<path>`."""
    app = Flask(__name__)
    state = _State(Path(root), jwt_secret, {b.id: b for b in buckets}, max_file_size)
    state.upload_expires_in = upload_expires_in
    app.extensions[EXTENSION] = state
    prefix = "/storage/v1"
    app.add_url_rule(f"{prefix}/status", "status", lambda: Response(status=200))
    app.add_url_rule(f"{prefix}/bucket/<bucket_id>", "bucket", bucket_info)
    app.add_url_rule(
        f"{prefix}/object/upload/sign/<bucket_id>/<path:name>",
        "sign",
        sign_upload,
        methods=["POST"],
    )
    app.add_url_rule(
        f"{prefix}/object/upload/sign/<bucket_id>/<path:name>", "upload", upload, methods=["PUT"]
    )
    app.add_url_rule(f"{prefix}/object/list/<bucket_id>", "list", list_objects, methods=["POST"])
    app.add_url_rule(f"{prefix}/object/<bucket_id>", "remove", delete_objects, methods=["DELETE"])
    for route in ("info/authenticated", "info"):
        app.add_url_rule(f"{prefix}/object/{route}/<bucket_id>/<path:name>", route, info)
    for route in ("object/authenticated", "object"):
        app.add_url_rule(f"{prefix}/{route}/<bucket_id>/<path:name>", route, download)

    @app.errorhandler(StorageError)
    def storage_error(exc: StorageError) -> Response:
        body = {
            "statusCode": exc.status,
            "code": exc.code,
            "error": exc.error,
            "message": exc.message,
        }
        status = 500 if exc.status == "500" else 400  # the object routes' legacy mapping
        return Response(json.dumps(body), status, mimetype="application/json")

    @app.before_request
    def preflight() -> Response | None:
        if request.method == "OPTIONS":  # a browser's CORS preflight (the PUT of an upload)
            return Response(status=204)
        return None

    @app.after_request
    def log_line(response: Response) -> Response:
        # Storage answers any origin (browsers upload to signed URLs from the app's pages).
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, DELETE"
            response.headers["Access-Control-Allow-Headers"] = (
                "authorization, x-client-info, apikey, content-type, x-upsert, cache-control"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        log.info("%s %s status=%d", request.method, request.path, response.status_code)
        return response

    app.extensions[PACING] = Paced(app.wsgi_app, delay_ms)
    app.wsgi_app = app.extensions[PACING]  # type: ignore[method-assign]
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the stand-in until interrupted; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fakes.storage_standin",
        description="Supabase Storage stand-in (signed uploads, downloads) on the filesystem.",
    )
    parser.add_argument("--root", required=True, help="the folder objects are stored in")
    parser.add_argument("--jwt-secret", default=os.environ.get("SUPABASE_JWT_SECRET", ""))
    parser.add_argument("--bucket", default=os.environ.get("STORAGE_BUCKET", "job-images"))
    parser.add_argument(
        "--file-size-limit",
        type=int,
        default=int(os.environ.get("IMAGE_MAX_BYTES") or 5 * 1024 * 1024),
    )
    parser.add_argument("--allowed-mime-types", default="image/png,image/jpeg,image/webp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8077)
    parser.add_argument("--delay-ms", type=float, default=float(os.environ.get(ENV_DELAY) or 0))
    args = parser.parse_args(argv)
    if not args.jwt_secret:
        parser.error("set --jwt-secret or SUPABASE_JWT_SECRET")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    mimes = tuple(m.strip() for m in args.allowed_mime_types.split(",") if m.strip())
    bucket = Bucket(args.bucket, args.file_size_limit, mimes)
    app = create_app(args.root, args.jwt_secret, [bucket], delay_ms=args.delay_ms)
    server = make_server(args.host, args.port, app, threaded=True)
    log.info("Storage stand-in on http://%s:%d/storage/v1", args.host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
