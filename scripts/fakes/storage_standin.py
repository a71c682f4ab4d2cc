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
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.serving import make_server

from scripts.fakes.pacing import ENV_DELAY, PACING, Paced
from scripts.fakes.storage_model import (
    EXTENSION,
    UPLOAD_EXPIRES_IN,
    Bucket,
    StorageError,
    StorageState,
)
from scripts.fakes.storage_objects import bucket_info, delete_objects, download, info, list_objects
from scripts.fakes.storage_uploads import sign_upload, upload

log = logging.getLogger("storage_standin")


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
    state = StorageState(Path(root), jwt_secret, {b.id: b for b in buckets}, max_file_size)
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
