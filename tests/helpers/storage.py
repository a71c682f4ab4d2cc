"""Uploading images as a client does: a signed upload URL, then the file straight to Storage.

`upload_direct` signs with the service key as `POST /api/uploads` does (for in-process tests);
`upload_via_api` asks a running producer for the URL. Both upload with supabase-py's storage
client (`upload_to_signed_url`), which sends the file as a multipart `file` part.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from storage3 import SyncStorageClient

from helpers.net import SERVICE_ROLE_KEY
from helpers.stack import User
from lib.storage import Storage

BUCKET = "job-images"


def put_signed(storage_url: str, path: str, token: str, data: bytes, content_type: str) -> Any:
    """Upload `data` to a signed upload URL's object (no key: the token is the permission)."""
    with SyncStorageClient(storage_url + "/", {}, http_client=httpx.Client(timeout=10)) as client:
        return client.from_(BUCKET).upload_to_signed_url(
            path, token, data, {"content-type": content_type}
        )


def upload_direct(
    storage_url: str, user_id: str, data: bytes, content_type: str = "image/png", ext: str = "png"
) -> str:
    """Sign a path in `user_id`'s folder with the service key, upload `data`; its path."""
    path = f"{user_id}/{uuid.uuid4().hex}.{ext}"
    storage = Storage(storage_url, SERVICE_ROLE_KEY, BUCKET)
    try:
        token = storage.sign_upload(path)["token"]
    finally:
        storage.close()
    put_signed(storage_url, path, token, data, content_type)
    return path


def upload_via_api(user: User, data: bytes, content_type: str = "image/png") -> str:
    """`POST /api/uploads` as `user`, then the upload; the object's path."""
    with user.client() as client:
        response = client.post("/api/uploads", json={"content_type": content_type})
    assert response.status_code == 201, response.text
    grant = response.json()
    storage_url = grant["signed_url"].split("/object/upload/sign/", 1)[0]
    put_signed(storage_url, grant["path"], grant["token"], data, content_type)
    return str(grant["path"])
