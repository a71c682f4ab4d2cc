"""The reconciler: heal the jobs that nothing else will move, even when every worker is down.

A QStash schedule (RECONCILE_CRON) calls the producer's signed `POST /api/reconcile`, which runs
`Reconciler.run` once. Each run acts on at most RECONCILE_BATCH jobs (reading at most MAX_PAGES
pages of candidates, past those whose attempt is alive) and RECONCILE_BATCH admissions per
tier, and heals:

- a running job whose attempt died: no lease in Redis and not updated for LEASE_TTL_SECONDS.
  It is re-published with a deduplication id of its own (`<job id>.heal.<n>`), since QStash
  drops a second publish with the job id within its 10-minute window;
- a job handed to the broker but never started for RECONCILE_QUEUED_AFTER_SECONDS (a lost
  message, or a clock skew beyond the tolerance that outlasted every retry): re-published too;
- a job past its retry budget (attempts >= JOB_RETRIES + 1; its failure callback was lost), or
  re-published RECONCILE_MAX_HEALS times already: failed, and the refund rule applied once;
- admission slots: members whose deadline passed are dropped, and those of terminal jobs freed;
- jobs whose submit died between insert and publish (the worker's sweeper does it too);
- uploaded images no job needs any more (lib/retention.py), when Storage is configured.

Each re-publish goes to a live worker box (lib/boxes.py: the listed box with the most free
capacity whose heartbeat is fresh, else the first of WORKER_URLS), never to the dead box that
let the lease lapse. Nothing is re-published to a box that does not answer `<box>/readyz`: the
message would only spend its retries, and its failure callback would then fail a job that the
worker's return would have run. Those jobs wait for a box (`deferred` in the summary).

Every step is one SQL function (supabase/migrations/*_reconcile.sql) or one Lua script, and each
re-checks the row under its lock, so runs that overlap heal a job once. Nothing here imports
worker-only code: it runs in the producer's Vercel function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lib.boxes import Registry, destination
from lib.config import Settings
from lib.errors import AppError
from lib.events import close_stream, emit_terminal
from lib.models import ErrorCode, JobStatus
from lib.queue.producer import Publisher
from lib.state import State
from lib.store import Store

if TYPE_CHECKING:
    from lib.storage import Storage

log = logging.getLogger("cs.reconcile")

TIERS = ("free", "paid")
# Pages of RECONCILE_BATCH candidates one run may read, past jobs whose attempt is alive.
MAX_PAGES = 10


@dataclass
class Summary:
    """What one run healed, by kind (the endpoint's JSON answer)."""

    republished: int = 0
    failed: int = 0
    refunded: int = 0
    admissions_freed: int = 0
    admissions_expired: int = 0
    swept: int = 0
    publish_errors: int = 0
    deferred: int = 0
    images_deleted: int = 0
    uploads_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def worker_ready(box: str, timeout: float = 3.0) -> bool:
    """Whether the worker box at `box` answers `/readyz` with 200 within `timeout` seconds."""
    import httpx

    try:
        return httpx.get(box.rstrip("/") + "/readyz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class Reconciler:
    """One reconciliation pass over the store, Redis and the broker.

    `ready(box)` says whether a worker box can take deliveries (default: `worker_ready`); it is
    asked once per box and run, and only when there is something to re-publish."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        state: State,
        publisher: Publisher,
        ready: Callable[[str], bool] | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.publisher = publisher
        self._ready = ready or worker_ready
        self.storage = storage
        self._up: dict[str, bool] = {}
        self._registry = Registry(state)

    def _live_box(self) -> str | None:
        """A box to re-publish to: the live one with the most room, else the first listed;
        None when that box is not ready."""
        boxes = self.settings.boxes
        picked = self._registry.pick(boxes) if len(boxes) > 1 else None
        box = destination(self.settings, picked)
        if box not in self._up:
            self._up[box] = self._ready(box)
            if not self._up[box]:
                log.warning("the worker box is not ready; stuck jobs wait", extra={"box": box})
        return box if self._up[box] else None

    def run(self) -> Summary:
        """Heal what can be healed now and say what was done. Safe to run concurrently with
        itself. Raises AppError (unavailable) when Redis or the database is down: the schedule's
        next tick tries again."""
        summary = Summary()
        self._up = {}
        self._jobs(summary)
        self._admissions(summary)
        self._sweep(summary)
        self._images(summary)
        return summary

    # Jobs --------------------------------------------------------------------------------------
    def _jobs(self, summary: Summary) -> None:
        s = self.settings
        after: tuple[Any, Any] = (None, None)
        acted = 0
        # Candidates whose attempt is alive (a long job not updated for LEASE_TTL) are skipped
        # by their lease; paging past them keeps them from hiding the dead ones behind.
        for _ in range(MAX_PAGES):
            rows = self.store.backend.call(
                "cs_reconcile_candidates",
                {
                    "p_running_seconds": s.lease_ttl_seconds,
                    "p_queued_seconds": s.reconcile_queued_after_seconds,
                    "p_limit": s.reconcile_batch,
                    "p_after_at": after[0],
                    "p_after_id": after[1],
                },
            )
            for row in rows or []:
                acted += self._heal(row, summary)
            if not rows or len(rows) < s.reconcile_batch or acted >= s.reconcile_batch:
                return
            after = (rows[-1]["updated_at"], rows[-1]["id"])

    def _heal(self, row: dict[str, Any], summary: Summary) -> int:
        """Heal one candidate; 1 if it was acted on, 0 if its attempt is alive."""
        s = self.settings
        # A live attempt keeps its lease; one that died lets it lapse within LEASE_TTL.
        if self.state.lease_ms(str(row["id"])) > 0:
            return 0
        # Detached mode: a job waiting for its model polls its queue; it is not lost.
        model = s.model_for(row["tier"], row["kind"])
        if self.state.waiting(str(row["id"]), row["tier"], model):
            return 0
        if int(row["attempts"]) > s.job_retries:
            self._fail(row, summary, ErrorCode.RETRIES_EXHAUSTED, "retries exhausted")
        elif int(row["heals"]) >= s.reconcile_max_heals:
            self._fail(row, summary, ErrorCode.UNAVAILABLE, "the job could not be delivered")
        else:
            box = self._live_box()
            if box is None:
                summary.deferred += 1
            else:
                self._republish(row, summary, box)
        return 1

    def _older_than(self, row: dict[str, Any]) -> int:
        s = self.settings
        return (
            s.lease_ttl_seconds if row["status"] == "running" else s.reconcile_queued_after_seconds
        )

    def _republish(self, row: dict[str, Any], summary: Summary, box: str) -> None:
        job_id = str(row["id"])
        claim = self.store.backend.call(
            "cs_reconcile_claim",
            {
                "p_job_id": job_id,
                "p_status": row["status"],
                "p_attempts": row["attempts"],
                "p_older_than_seconds": self._older_than(row),
            },
        )
        if not claim or not claim.get("claimed"):
            return
        heal = int(claim["heals"])
        try:
            self.publisher.publish(
                job_id,
                user_id=str(row["user_id"]),
                tier=row["tier"],
                model=self.settings.model_for(row["tier"], row["kind"]),
                dedup_id=f"{job_id}.heal.{heal}",
                box=box,
            )
        except AppError:
            # The claim stands: the job is looked at again once it is stale again.
            summary.publish_errors += 1
            log.warning("could not re-publish a stuck job", extra={"job_id": job_id})
            return
        summary.republished += 1
        log.info(
            "reconciler re-published a stuck job",
            extra={
                "job_id": job_id,
                "was": row["status"],
                "attempts": row["attempts"],
                "heal": heal,
                "box": box,
            },
        )

    def _fail(self, row: dict[str, Any], summary: Summary, code: str, message: str) -> None:
        job_id = str(row["id"])
        r = self.store.backend.call(
            "cs_reconcile_fail",
            {
                "p_job_id": job_id,
                "p_status": row["status"],
                "p_attempts": row["attempts"],
                "p_older_than_seconds": self._older_than(row),
                "p_error": {"code": code, "message": f"{message} (reconciled)"},
                "p_max_pct": self.settings.refund_max_delivered_pct,
            },
        )
        if not r or not r.get("changed"):
            return
        summary.failed += 1
        if r.get("refund") == "refund":
            summary.refunded += 1
        job = r["job"]
        emit_terminal(
            self.state,
            job_id,
            JobStatus.FAILED,
            result=None,
            error=job.get("error"),
            attempt=int(job.get("attempts") or 0),
        )
        self.state.release(job_id, row["tier"], str(row["user_id"]))
        log.info(
            "reconciler failed a stuck job",
            extra={"job_id": job_id, "code": code, "refund": r.get("refund")},
        )

    # Admission ---------------------------------------------------------------------------------
    def _admissions(self, summary: Summary) -> None:
        for tier in TIERS:
            dropped, members = self.state.admission_scan(tier, self.settings.reconcile_batch)
            summary.admissions_expired += dropped
            if not members:
                continue
            terminal = self.store.backend.call("cs_reconcile_terminal", {"p_ids": members})
            for job in terminal or []:
                job_id, user_id = str(job["id"]), str(job["user_id"])
                self._close(job_id, user_id)
                self.state.release(job_id, job["tier"], user_id)
                summary.admissions_freed += 1
                log.info("reconciler freed a finished job's admission", extra={"job_id": job_id})

    def _close(self, job_id: str, user_id: str) -> None:
        """Close a finished job's stream (once: `close_stream`) whose admission outlived it: its
        worker died after the row's end and maybe before the stream's. Inline, QStash's retry
        would close it; a detached job's delivery was answered already."""
        finished = self.store.get_job(job_id, user_id)
        if finished is not None:
            close_stream(self.state, finished)

    # Images ------------------------------------------------------------------------------------
    def _images(self, summary: Summary) -> None:
        if self.storage is None:
            return
        from lib.retention import sweep

        try:
            swept = sweep(self.settings, self.store, self.state, self.storage)
        except AppError as exc:
            # The jobs were healed; the images wait for the next run.
            log.warning("the image retention sweep failed", extra={"code": exc.code})
            return
        summary.images_deleted = swept.images_deleted
        summary.uploads_deleted = swept.uploads_deleted

    # Never enqueued ----------------------------------------------------------------------------
    def _sweep(self, summary: Summary) -> None:
        for job_id in self.store.sweep_unenqueued(self.settings.sweep_after_seconds):
            summary.swept += 1
            log.warning("reconciler swept a job that was never enqueued", extra={"job_id": job_id})
            emit_terminal(
                self.state,
                job_id,
                JobStatus.FAILED,
                result=None,
                error={"code": ErrorCode.UNAVAILABLE, "message": "the job was never queued"},
                attempt=0,
            )
