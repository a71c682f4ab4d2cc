"""Supabase Storage, for image input: signed upload URLs, a ranged read at submit, downloads.

Through supabase-py's storage client (`storage3`, supabase/supabase-py
src/storage/src/storage3/_sync/file_api.py) with the service-role key: `create_signed_upload_url`
(POST /object/upload/sign/<bucket>/<path>, a token valid for 2 hours) and `download`
(GET /object/<bucket>/<path>); the reconciler's retention sweep uses `remove` (DELETE
/object/<bucket>, `{"prefixes": [names]}`: exact names, a missing one skipped, the deleted rows
answered; supabase/storage src/http/routes/object/deleteObjects.ts) and tests `list` (POST
/object/list/<bucket>, `{prefix, limit, offset, sortBy}`). The submit's check reads only the
object's first bytes: one GET of the same object with a `Range` header, sent on the client's
own session. Storage answers it with 206 and `Content-Range: bytes 0-N/<size>` (supabase/storage
src/storage/renderer/renderer.ts sets `Accept-Ranges: bytes` and forwards the range).

Storage's object routes answer errors with HTTP 400 and the real status in the body's
`statusCode` (supabase/storage src/http/error-handler.ts): a missing object is
`{"statusCode": "404", "error": "not_found", "message": "Object not found"}`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from lib.errors import AppError, NotFoundError, UnavailableError

if TYPE_CHECKING:
    from lib.config import Settings

log = logging.getLogger("cs.storage")

# Names per DELETE: Storage's MAX_OBJECTS_PER_REQUEST when its hard limits are on
# (src/storage/limits.ts `enforceDeleteObjectsLimit`) is 1,000; we stay well under it.
REMOVE_BATCH = 100
_CONTENT_RANGE = re.compile(r"^bytes \d+-\d+/(\d+)$")


class Storage:
    """One bucket of Supabase Storage, used with the service-role key; thread-safe."""

    def __init__(self, url: str, key: str, bucket: str, timeout: float = 5.0) -> None:
        from storage3 import SyncStorageClient

        self.url = url.rstrip("/")
        self.bucket = bucket
        self._auth = {"apikey": key, "Authorization": f"Bearer {key}"}
        # Our own client: a bounded timeout, HTTP/1.1 (the SDK's default asks for h2).
        self._http = httpx.Client(timeout=timeout, follow_redirects=True)
        self._client = SyncStorageClient(self.url + "/", self._auth, http_client=self._http)

    def close(self) -> None:
        self._http.close()

    def ping(self) -> None:
        """Return when Storage answers for the bucket (`GET /bucket/<id>`, the service key).

        Raises NotFoundError (no such bucket), UnavailableError (Storage down or refusing).
        Only the status counts: the SDK's `get_bucket` model requires a string `owner`, which a
        bucket created with the service key (no user) may not have."""
        url = f"{self.url}/bucket/{quote(self.bucket)}"
        with _mapped(self.bucket):
            response = self._http.get(url, headers=self._auth)
            if response.status_code >= 400:
                _raise_for(response)

    def sign_upload(self, path: str) -> dict[str, Any]:
        """A signed upload URL for `path` (`signed_url`, `token`). Raises UnavailableError."""
        with _mapped(path):
            return dict(self._client.from_(self.bucket).create_signed_upload_url(path))

    def download(self, path: str) -> bytes:
        """The whole object. Raises NotFoundError, UnavailableError."""
        with _mapped(path):
            return self._client.from_(self.bucket).download(path)

    def remove(self, paths: list[str]) -> list[str]:
        """Delete the objects named `paths` (at most REMOVE_BATCH) in one request; the names
        that were deleted. A name with no object is skipped, so a repeated call is harmless.
        Raises UnavailableError (Storage down or refusing)."""
        if not paths:
            return []
        if len(paths) > REMOVE_BATCH:
            raise ValueError(f"at most {REMOVE_BATCH} objects per request")
        with _mapped("remove"):
            rows = self._client.from_(self.bucket).remove(list(paths))
        return [str(row.get("name")) for row in rows or [] if isinstance(row, dict)]

    def list(self, folder: str, limit: int = 100) -> list[str]:
        """The names of the objects directly in `folder` (at most `limit`, by name).
        Raises UnavailableError."""
        with _mapped(folder):
            rows = self._client.from_(self.bucket).list(folder, {"limit": limit})
        return [str(row["name"]) for row in rows or [] if row.get("id") is not None]

    def head(self, path: str, length: int) -> tuple[bytes, int]:
        """The object's first `length` bytes and its total size, in one request.

        Raises NotFoundError (no such object), UnavailableError (Storage down)."""
        url = f"{self.url}/object/{quote(self.bucket)}/{quote(path)}"
        headers = {**self._auth, "Range": f"bytes=0-{length - 1}"}
        with _mapped(path):
            try:
                return self._head(url, headers, length)
            except _Empty:  # no byte to range over: S3 (and Storage) answer 416
                return b"", 0

    def _head(self, url: str, headers: dict[str, str], length: int) -> tuple[bytes, int]:
        with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            head = b""
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) >= length:  # a server that ignored Range: stop reading
                    break
            return head[:length], _total(response, len(head))


class _Empty(Exception):
    """The object has no bytes (a range over it is unsatisfiable)."""


def _total(response: httpx.Response, received: int) -> int:
    matched = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if response.status_code == 206 and matched:
        return int(matched.group(1))
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else received


def _raise_for(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = {}
    status = str(body.get("statusCode", response.status_code)) if isinstance(body, dict) else ""
    if status == "404" or response.status_code == 404:
        raise NotFoundError("no such object")
    if status == "416" or response.status_code == 416:
        raise _Empty()
    raise UnavailableError(f"storage answered {response.status_code} ({status})")


@contextmanager
def _mapped(path: str) -> Iterator[None]:
    """Map the SDK's and httpx's errors to ours: a missing object is NotFoundError, anything
    else Storage answers or fails with is UnavailableError (503, nothing charged)."""
    from storage3.exceptions import StorageApiError

    try:
        yield
    except AppError:
        raise
    except StorageApiError as exc:
        if str(exc.status) == "404" or exc.code in ("not_found", "NoSuchKey"):
            raise NotFoundError("no such object") from None
        log.warning("storage refused a request", extra={"code": exc.code})
        raise UnavailableError("storage refused the request") from exc
    except httpx.HTTPError as exc:
        raise UnavailableError("storage is unreachable") from exc


def from_settings(settings: Settings) -> Storage:
    """The Storage of STORAGE_URL (or SUPABASE_URL), with SUPABASE_SERVICE_ROLE_KEY."""
    return Storage(
        settings.storage_api_url, settings.supabase_service_role_key, settings.storage_bucket
    )
