"""Image retention: delete an uploaded image once no job needs it (run by the reconciler).

Uploaded images are screenshots of resumes and job postings: personal data, and storage cost.
Two rules, one mechanism (a bounded sweep in each reconciler run, `sweep`):

- **An image a job names** is deleted IMAGE_RETENTION_HOURS after that job ended (default 24:
  the user can still look at it and resubmit it), unless another job naming it is queued or
  running (a pipeline's ocr step may run later) or ended within the retention: that job
  releases it in its turn. Driven by the database (`cs_images_due`: terminal jobs past the
  retention whose image is not released, earliest first, RECONCILE_BATCH a run).
- **An upload no job names** is deleted UPLOAD_ORPHAN_SECONDS after its URL was handed out
  (the URL's 2 hours, then an hour to submit the job). Driven by the record `POST /api/uploads`
  keeps in Redis (`uploads:issued`, written in the same Lua call as the user's quota), oldest
  first, RECONCILE_BATCH a run; a path some job names is left to the first rule.

Storage is never listed. Each step is idempotent and safe to die in: the objects are deleted
first (Storage skips names with no object), the records dropped after, so a run that dies in
between deletes them again next time. A path is deleted only when it lies in its job's user's
folder and has the shape `new_upload` gives (a job's input is checked at submit, and again here).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib.images import PATH_PATTERN

if TYPE_CHECKING:
    from lib.config import Settings
    from lib.state import State
    from lib.storage import Storage
    from lib.store import Store

log = logging.getLogger("cs.retention")

# An upload URL is valid for 2 hours (Storage's createSignedUploadUrl); an hour more to submit
# the job that names the upload.
UPLOAD_URL_SECONDS = 2 * 3600
UPLOAD_ORPHAN_SECONDS = UPLOAD_URL_SECONDS + 3600
_PATH = re.compile(PATH_PATTERN)


@dataclass
class Swept:
    """What one sweep did: images of ended jobs deleted, uploads no job named deleted."""

    images_deleted: int = 0
    uploads_deleted: int = 0


def _ours(path: Any, user_id: str | None = None) -> bool:
    """Whether `path` is an upload path as `new_upload` makes them (in `user_id`'s folder)."""
    if not isinstance(path, str) or not _PATH.match(path):
        return False
    return user_id is None or path.split("/", 1)[0] == user_id


def sweep(settings: Settings, store: Store, state: State, storage: Storage) -> Swept:
    """Delete the images no job needs any more: at most RECONCILE_BATCH of each rule.

    Raises AppError (unavailable) when the database, Redis or Storage is down; what was done
    stays done and the rest waits for the next run."""
    from lib.storage import REMOVE_BATCH

    limit = min(settings.reconcile_batch, REMOVE_BATCH)
    swept = Swept()
    swept.images_deleted = _ended_jobs(settings, store, storage, limit)
    swept.uploads_deleted = _unnamed_uploads(store, state, storage, limit)
    return swept


def _ended_jobs(settings: Settings, store: Store, storage: Storage, limit: int) -> int:
    rows = store.backend.call(
        "cs_images_due",
        {"p_retention_seconds": settings.image_retention_hours * 3600, "p_limit": limit},
    )
    if not rows:
        return 0
    doomed = {
        row["path"]
        for row in rows
        if not row.get("needed") and _ours(row.get("path"), str(row["user_id"]))
    }
    deleted = storage.remove(sorted(doomed)) if doomed else []
    store.backend.call("cs_images_released", {"p_ids": [str(row["id"]) for row in rows]})
    for row in rows:
        if row["path"] in doomed:
            log.info("deleted the image of an ended job", extra={"job_id": str(row["id"])})
    return len(deleted)


def _unnamed_uploads(store: Store, state: State, storage: Storage, limit: int) -> int:
    key = state.keys.uploads_issued()
    before_ms = int((time.time() - UPLOAD_ORPHAN_SECONDS) * 1000)
    due = state.backend.command("ZRANGE", key, "-inf", before_ms, "BYSCORE", "LIMIT", 0, limit)
    paths = [p.decode() if isinstance(p, bytes) else str(p) for p in due or []]
    if not paths:
        return 0
    named = set(store.backend.call("cs_images_named", {"p_paths": paths}) or [])
    doomed = sorted(p for p in paths if p not in named and _ours(p))
    deleted = storage.remove(doomed) if doomed else []
    state.backend.command("ZREM", key, *paths)
    if deleted:
        log.info("deleted uploads no job named", extra={"count": len(deleted)})
    return len(deleted)
