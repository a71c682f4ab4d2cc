"""How an attempt ends: finished with a status, failed (refunded by the store), or handed back
to the broker for a retry; and the broker's failure callback, once it gave up on a job.

An `Executor` mixin: it uses the executor's store, state and metrics.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lib.errors import AppError
from lib.events import JobEvents, close_stream
from lib.leases import Lease
from lib.models import ErrorCode, Job, JobStatus
from lib.state import State
from lib.store import Store
from lib.verdict import Busy, Done, GiveUp, RetryAfter, Verdict

if TYPE_CHECKING:
    from lib.metrics import Metrics

log = logging.getLogger("cs.executor")


class AttemptEndings:
    """The endings of `lib.executor.Executor`'s attempts, and its failure callback."""

    store: Store
    state: State
    metrics: Metrics | None

    # Endings -----------------------------------------------------------------------------------
    def _finish(
        self, job: Job, lease: Lease, status: JobStatus, *, error: dict[str, Any]
    ) -> Verdict:
        finished = self.store.finish(
            job.id,
            status,
            error=error,
            delivered_chars=lease.delivered_chars(),
            typical_chars=lease.typical,
        )
        final = finished.job or job
        close_stream(self.state, final)
        self.state.release(job.id, lease.tier, lease.user_id, lease.token)
        return Done(job.id, status=final.status)

    def _keep_partial(self, lease: Lease) -> None:
        """A cancelled attempt's delivered output becomes the job's `result.partial`."""
        if (events := lease.events) is None or not events.written:
            return
        try:
            self.store.keep_partial(lease.job_id, events.attempt, "".join(events.written))
        except AppError:
            log.warning("could not keep the partial output", extra={"job_id": lease.job_id})

    def _fail(self, job: Job, lease: Lease, code: str, message: str) -> Verdict:
        finished = self.store.finish(
            job.id,
            JobStatus.FAILED,
            error={"code": code, "message": message},
            delivered_chars=lease.delivered_chars(),
            typical_chars=lease.typical,
        )
        log.info("job failed", extra={"job_id": job.id, "code": code, "refund": finished.refund})
        close_stream(self.state, finished.job or job)
        self.state.release(job.id, lease.tier, lease.user_id, lease.token)
        return GiveUp(code, message, job_id=job.id)

    def _retryable(
        self,
        job: Job,
        lease: Lease,
        code: str,
        message: str,
        retry_after: float | None,
        last: bool,
        throttled: bool = False,
    ) -> Verdict:
        if last:
            return self._fail(job, lease, code, f"{message} (retries exhausted)")
        try:
            events = lease.events or JobEvents(
                self.state, job.id, job.attempts, viewer=lambda: lease.watch
            )
            events.retrying(code, message)
        except Exception:
            log.warning("could not emit retrying", extra={"job_id": job.id})
        self.state.release(job.id, lease.tier, lease.user_id, lease.token, slots=False)
        # Redis or the database is down: no Retry-After, so the broker's own backoff spaces
        # the retries (a Retry-After replaces it and still uses up a retry).
        delay = None if code == ErrorCode.UNAVAILABLE else retry_after or 5
        return RetryAfter(code, message, delay, throttled=throttled)

    # Failure callback --------------------------------------------------------------------------
    def fail_delivery(self, job_id: str, user_id: str, tier: str, reason: str) -> Verdict:
        """The broker gave up on the job: fail it and refund once, close its stream.

        While another delivery's attempt holds the job's lease (a duplicate gave up while the
        original runs), the callback is deferred with 429 and Retry-After: if that attempt
        dies, its lease lapses and the retried callback fails the job; if it ends, the
        retried callback finds the job terminal and changes nothing."""
        held_ms = self.state.lease_ms(job_id)
        if held_ms > 0:
            log.info(
                "failure callback deferred: an attempt holds the job", extra={"job_id": job_id}
            )
            return Busy("busy", "an attempt of this job is running", held_ms / 1000)
        finished = self.store.finish(
            job_id,
            JobStatus.FAILED,
            error={"code": ErrorCode.RETRIES_EXHAUSTED, "message": reason},
        )
        if finished.job:
            close_stream(self.state, finished.job)
            if finished.changed and self.metrics:
                self.metrics.finished(finished.job, "failed")
        self.state.release(job_id, tier, user_id)
        log.info("failure callback", extra={"job_id": job_id, "changed": finished.changed})
        return Done(job_id, changed=finished.changed)
