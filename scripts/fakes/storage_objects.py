"""The Storage stand-in's reads and deletes: download (with ranges), info, list, remove, and the
bucket's own answer."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Response, request

from scripts.fakes.storage_model import (
    StorageError,
    current_state,
    find_bucket,
    not_found,
    object_path,
    read_meta,
    require_service_role,
)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def download(bucket_id: str, name: str) -> Response:
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
    path = object_path(state, bucket, name)
    if not path.is_file():
        raise not_found()
    meta, data = read_meta(path), path.read_bytes()
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
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
    path = object_path(state, bucket, name)
    if not path.is_file():
        raise not_found()
    meta = read_meta(path)
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
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
    prefix, limit, offset, column, descending = _list_options(_body("prefix"))
    folder = state.root / bucket.id / prefix.strip("/") if prefix.strip("/") else None
    root = folder or state.root / bucket.id
    if folder is not None:
        object_path(state, bucket, prefix.strip("/"))  # no climbing out of the bucket
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
            meta = read_meta(child)
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
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
    prefixes = _body("prefixes")["prefixes"]
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        raise _invalid("body/prefixes must be array")
    if not prefixes:
        raise _invalid("body/prefixes must NOT have fewer than 1 items")
    deleted = []
    for name in dict.fromkeys(prefixes):
        try:
            path = object_path(state, bucket, name)
        except StorageError:
            continue  # matches no row (Storage does not check the names it deletes)
        if not path.is_file():
            continue  # no such row: Storage deletes nothing for it and says nothing
        meta = read_meta(path)
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
    state = current_state()
    require_service_role(state)
    bucket = find_bucket(state, bucket_id)
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
