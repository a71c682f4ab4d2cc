"""Image input: the reference a job's input holds, and the checks an uploaded image passes.

An image never travels in a request body (Vercel refuses bodies over 4.5 MB). The client asks
for a signed upload URL (`POST /api/uploads`, `new_upload`), uploads the file straight to
Supabase Storage, and submits a job whose input names the object by its `path`. Paths are
`<user id>/<random>.<ext>`: a submit may name only the caller's own uploads.

At submit the producer reads the object's first HEAD_BYTES in one ranged GET (the one extra
round trip an image job costs) and refuses, before anything is charged: a path that is not the
caller's, an upload never completed, an empty or oversized object, a type other than PNG, JPEG
or WebP by its magic bytes (whatever mime type was declared), and a header without a size.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from lib.errors import AppError, InputError, NotFoundError, RateLimitError, UnavailableError
from lib.models import ErrorCode

if TYPE_CHECKING:
    from lib.config import Settings
    from lib.state import State
    from lib.storage import Storage

# The MIME types accepted, each with the file extension an upload's path gets.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# Enough of a file to hold its type and dimensions: a JPEG's frame header can follow large
# EXIF and ICC segments (each at most 64 KiB).
HEAD_BYTES = 128 * 1024
# POST /api/uploads counts each user's signed URLs in a fixed one-hour window (UPLOADS_PER_HOUR).
UPLOAD_WINDOW_MS = 3600 * 1000
MAX_PATH_CHARS = 36 + 1 + 32 + 5
PATH_PATTERN = (
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/[0-9a-f]{32}\.(png|jpg|webp)$"
)


class ImageRef(BaseModel):
    """An uploaded image, by its path in the Storage bucket (from `POST /api/uploads`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str = Field(max_length=MAX_PATH_CHARS, pattern=PATH_PATTERN)


@dataclass(frozen=True)
class Image:
    """What the header of an uploaded image says."""

    mime: str
    width: int
    height: int
    size: int


class UploadRequest(BaseModel):
    """The body of `POST /api/uploads`: what the client is about to upload."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content_type: str = Field(max_length=100)
    size: int | None = Field(default=None, ge=0)


def new_upload(
    settings: Settings,
    storage: Storage,
    user_id: str,
    body: Any,
    count: Callable[[str], None] = lambda path: None,
) -> dict[str, Any]:
    """A signed upload URL for one new image of `user_id`, under a fresh path of theirs.
    `count(path)` is called once the request is valid, before the URL is signed (the user's
    quota and the upload's record for the retention sweep, `count_upload`).

    Raises InputError (400, bad body), AppError 415 (not PNG/JPEG/WebP), 413 (declared size
    over IMAGE_MAX_BYTES), RateLimitError (from `count`), UnavailableError (Storage down)."""
    from pydantic import ValidationError

    try:
        req = UploadRequest.model_validate(body)
    except ValidationError as exc:
        details = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
        raise InputError("the upload request is invalid", details=details) from None
    ext = EXTENSIONS.get(req.content_type)
    if ext is None:
        raise _unsupported(req.content_type)
    if req.size is not None:
        _check_size(req.size, settings.image_max_bytes)
    path = f"{user_id}/{uuid.uuid4().hex}.{ext}"
    count(path)
    signed = storage.sign_upload(path)
    return {
        "bucket": settings.storage_bucket,
        "path": path,
        "signed_url": signed["signed_url"],
        "token": signed["token"],
        "max_bytes": settings.image_max_bytes,
        "content_types": sorted(EXTENSIONS),
    }


def count_upload(state: State, user_id: str, limit: int, path: str) -> None:
    """Count one signed upload URL for the user in the current hour and, within the limit,
    record `path` as issued (the retention sweep deletes it if no job names it); one Lua call.
    Raises RateLimitError (429 rate_limited, Retry-After when the window closes) past `limit`."""
    import time

    from lib.state import scripts

    count, left_ms = state.backend.run(
        scripts.COUNT_UPLOAD,
        [state.keys.uploads(user_id), state.keys.uploads_issued()],
        [UPLOAD_WINDOW_MS, limit, path, int(time.time() * 1000)],
    )
    if int(count) <= limit:
        return
    next_slot_s = max(1, -(-int(left_ms) // 1000))
    raise RateLimitError(
        f"at most {limit} uploads an hour; try again in about {next_slot_s} s",
        code=ErrorCode.RATE_LIMITED,
        retry_after=next_slot_s,
        details={
            "reason": f"{limit} upload URLs were handed out this hour, the limit is {limit}",
            "limit": limit,
            "next_slot_s": next_slot_s,
        },
    )


def check_job(
    storage: Callable[[], Storage | None],
    settings: Settings,
    user_id: str,
    kind: str,
    job_input: dict[str, Any],
) -> None:
    """The uploads a job names (none for a text kind): the caller's own, complete, PNG/JPEG/WebP
    by their bytes, within IMAGE_MAX_BYTES, decodable; one ranged read each. Raises InputError
    or AppError (413, 415), or UnavailableError; called before anything is charged.

    `storage` is asked for the Storage client only when the job names an upload, so a text
    submit never builds it (nor imports its SDK: tests/test_cold_start.py)."""
    from lib import handlers

    handler = handlers.get(kind)
    if handler is None:
        return
    for field, path in handler.images(handler.input_model.model_validate(job_input)).items():
        check_owned(user_id, path, field)
        client = storage()
        if client is None:
            raise UnavailableError("image input needs Storage (STORAGE_URL or SUPABASE_URL)")
        check_upload(client, path, settings.image_max_bytes, field)


def check_owned(user_id: str, path: str, field: str) -> None:
    """Raise InputError unless `path` lies in `user_id`'s own folder."""
    if path.split("/", 1)[0] != user_id:
        raise InputError("the image is not one of your uploads", details={field: "not yours"})


def check_upload(storage: Storage, path: str, max_bytes: int, field: str) -> Image:
    """Read the head of an uploaded image (one ranged GET) and check it.

    Raises InputError (never uploaded, empty, undecodable), AppError 413 (too large) or 415
    (not PNG/JPEG/WebP by its bytes), UnavailableError (Storage down)."""
    try:
        head, size = storage.head(path, HEAD_BYTES)
    except NotFoundError:
        raise InputError(
            "the image was never uploaded (or its upload did not complete)",
            details={field: "no such upload"},
        ) from None
    return inspect(head, size, max_bytes, field)


def inspect(head: bytes, size: int, max_bytes: int, field: str = "image") -> Image:
    """Check an image from its first bytes and its total size; see `check_upload`."""
    import filetype
    import imagesize

    if size == 0 or not head:
        raise InputError("the image is empty", details={field: "0 bytes"})
    _check_size(size, max_bytes)
    mime = filetype.guess_mime(head)
    if mime not in EXTENSIONS:
        raise _unsupported(mime or "unknown")
    width, height = imagesize.get(io.BytesIO(head))
    if width <= 0 or height <= 0:
        raise InputError(
            "the image cannot be decoded: its header has no size",
            details={field: "not a decodable image"},
        )
    return Image(mime, width, height, size)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise AppError(
            f"the image is {size} bytes; at most {max_bytes}",
            code=ErrorCode.PAYLOAD_TOO_LARGE,
            status=413,
            details={"size": size, "max_bytes": max_bytes},
        )


def _unsupported(mime: str) -> AppError:
    return AppError(
        f"images must be PNG, JPEG or WebP, not {mime}",
        code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        status=415,
        details={"content_types": sorted(EXTENSIONS)},
    )


def data_url(content: bytes) -> str:
    """The image as a `data:` URL for an OpenAI `image_url` part, its type and header checked
    again (the worker trusts nothing it reads; the size was checked at submit). Raises
    PermanentError(unreadable_image) for a bad image."""
    import base64

    from lib.errors import PermanentError

    try:
        image = inspect(content[:HEAD_BYTES], len(content), len(content))
    except AppError as exc:
        raise PermanentError(
            f"the image cannot be used: {exc.message}", code=ErrorCode.UNREADABLE_IMAGE
        ) from None
    return f"data:{image.mime};base64,{base64.b64encode(content).decode()}"
