"""Run one delivery of one job: lease, attempt, result, events, release.

The executor does not depend on HTTP: `execute()` takes the delivery's fields and returns a
`lib.verdict.Verdict` (done, retry after, give up, busy) that the worker maps to the broker's
answer (`lib.queue.wire.answer`). Every effect is made once by the SQL functions and the Lua
scripts, so a duplicate delivery, sequential or concurrent, never runs a handler twice at the
same time and never overwrites a terminal job.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lib import handlers, logs, pipelines, tracing
from lib.config import Settings
from lib.errors import AppError, PermanentError, RetryableError
from lib.events import Delivery, JobEvents, StreamClosed, close_stream
from lib.executor_endings import AttemptEndings
from lib.handlers.base import Context, Handler, repair_problem
from lib.leases import Lease, Leases
from lib.llm_types import LLM
from lib.models import ErrorCode, Job, JobStatus
from lib.slots import ModelSlots
from lib.state import Acquire, State
from lib.store import Attempt, Delivered, Started, Store
from lib.verdict import Busy, Done, RetryAfter, Verdict

if TYPE_CHECKING:
    from lib.metrics import Metrics

log = logging.getLogger("cs.executor")

LEASE_LOST = "lease_lost"


class Executor(AttemptEndings):
    """Executes deliveries; thread-safe, one instance per worker process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        state: State,
        llm: LLM,
        metrics: Metrics | None = None,
        read_image: Callable[[str], bytes] | None = None,
    ) -> None:
        self.settings = settings
        self.read_image = read_image  # image input: lib.storage.Storage.download
        self.store = store
        self.state = state
        self.llm = llm
        self.metrics = metrics
        self.leases = Leases(
            state, max(0.2, settings.lease_ttl_seconds / 3), settings.admission_ttl_seconds
        )
        # An attempt whose lease was not renewed for 2/3 of its TTL stops writing: by the
        # time Redis lets the lease go and another delivery takes it, this one has stopped.
        self._fence = settings.lease_ttl_seconds * 2 / 3
        self._draining_since: float | None = None
        self._slots = ModelSlots(settings)

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start renewing the leases of running attempts (idempotent)."""
        self.leases.start()

    def close(self) -> None:
        """Stop renewing leases; running attempts then fence themselves."""
        self.leases.stop()

    def drain(self) -> None:
        """Stop taking work; running attempts get WORKER_DRAIN_SECONDS to finish."""
        if self._draining_since is None:
            self._draining_since = time.monotonic()
            log.info("draining", extra={"running": self.leases.count()})

    @property
    def draining(self) -> bool:
        """Whether `drain` was called."""
        return self._draining_since is not None

    def running(self) -> int:
        """How many attempts this process runs."""
        return self.leases.count()

    # Delivery ----------------------------------------------------------------------------------
    def execute(self, job_id: str, user_id: str, tier: str, *, max_retries: int) -> Verdict:
        """Run one delivery of a job and decide what becomes of it.

        Raises AppError when Redis or the database fails before the attempt settles (the
        lease is then released, so the broker's retry is not refused as busy)."""
        if self.draining:
            return RetryAfter(ErrorCode.WORKER_SHUTTING_DOWN, "the worker is shutting down", 5)
        lease = Lease(job_id, tier, user_id, uuid.uuid4().hex)
        acquired = self.state.acquire(job_id, tier, user_id, lease.token)
        if acquired.outcome == Acquire.DONE:
            self.state.release(job_id, tier, user_id)
            return Done(job_id, status=acquired.status, note="already finished")
        if acquired.outcome == Acquire.BUSY:
            wait = max(1, math.ceil((acquired.remaining_ms or 1000) / 1000))
            return Busy("busy", "another attempt holds this job", wait)
        lease.watch = acquired.watch
        self.leases.add(lease)
        if self.metrics:
            self.metrics.running(+1)
        try:
            return self._attempt(lease, max_retries=max_retries)
        except AppError:
            # The store or Redis failed before the attempt settled: free the lease (keep the
            # slots, the job is still live) so the broker's retry is not refused as busy.
            try:
                self.state.release(job_id, tier, user_id, lease.token, slots=False)
            except AppError:
                log.warning("could not release the lease", extra={"job_id": job_id})
            raise
        finally:
            self.leases.remove(lease)
            if self.metrics:
                self.metrics.running(-1)

    def _attempt(self, lease: Lease, *, max_retries: int) -> Verdict:
        return self.run_started(lease, self.store.start_attempt(lease.job_id), max_retries)

    def run_started(self, lease: Lease, started: Started, max_retries: int) -> Verdict:
        """Run the attempt `started` (the answer of `store.start_attempt`) under `lease` to its
        verdict: the inline delivery's path, and detached mode's background run
        (lib/detached.py). Raises AppError when Redis or the database fails before it settles."""
        job_id = lease.job_id
        if started.outcome == Attempt.NOT_FOUND:
            log.warning("delivery for an unknown job", extra={"job_id": job_id})
            self.state.release(job_id, lease.tier, lease.user_id, lease.token)
            return Done(job_id, note="unknown job")
        job = started.job
        assert job is not None
        lease.step, lease.steps = started.step, started.steps  # a pipeline's (lib/pipelines.py)
        # The last attempt is decided by the job's own attempt count (this one included) against
        # the signed `retries`, never by the unsigned Upstash-Retried header.
        last = job.attempts - started.attempts_base > max_retries  # a pipeline's: per step
        if started.outcome == Attempt.TERMINAL:
            close_stream(self.state, job)
            self.state.release(job_id, lease.tier, lease.user_id, lease.token)
            return Done(job_id, status=job.status)
        extra = {"job_id": job_id, "attempt": job.attempts, "kind": job.kind, "tier": job.tier}
        logs.bind(attempt=job.attempts, kind=job.kind)
        tracing.annotate(attempt=job.attempts, kind=job.kind)
        log.info("attempt started", extra=extra)
        began = time.monotonic()
        try:
            verdict = self._run(job, started.input or {}, lease)
        except StreamClosed:
            verdict = self._finish(
                job, lease, JobStatus.CANCELLED, error={"code": "cancelled", "message": "cancelled"}
            )
            self._keep_partial(lease)
        except PermanentError as exc:
            verdict = self._fail(job, lease, exc.code, exc.message)
        except RetryableError as exc:
            if exc.code == LEASE_LOST:
                # Another attempt may own the job now: write nothing, decide nothing, let the
                # broker redeliver (it then finds the job busy, done, or free to run).
                return RetryAfter(exc.code, exc.message, exc.retry_after or 1)
            verdict = self._retryable(
                job,
                lease,
                exc.code,
                exc.message,
                exc.retry_after,
                last,
                throttled=exc.status == 429,
            )
        except Exception:
            log.exception("attempt crashed", extra=extra)
            verdict = self._retryable(job, lease, ErrorCode.INTERNAL, "internal error", 5, last)
        if lease.events is not None:  # a repair attempt ran after the first
            extra["attempt"] = lease.events.attempt
        log.info(
            "attempt ended",
            extra={
                **extra,
                "verdict": type(verdict).__name__,
                "seconds": round(time.monotonic() - began, 3),
            },
        )
        if self.metrics:
            self.metrics.attempt(job, verdict, time.monotonic() - began)
        return verdict

    def _run(self, job: Job, raw_input: dict[str, Any], lease: Lease) -> Verdict:
        handler = handlers.get(job.kind)
        if handler is None:
            raise PermanentError(f"unknown job kind {job.kind!r}", code=ErrorCode.INVALID_INPUT)
        try:
            job_input = handler.input_model.model_validate(raw_input)
        except ValidationError as exc:
            raise PermanentError(
                "the stored input is invalid", code=ErrorCode.INVALID_INPUT
            ) from exc
        lease.typical = handler.expected_chars
        try:
            return self._generate(job, handler, job_input, lease)
        except PermanentError as exc:
            if exc.code != ErrorCode.INVALID_MODEL_OUTPUT:
                raise
            problem = repair_problem(exc)
        # Invalid model output (a prompt injection can cause it) gets one repair attempt.
        return self._generate(self._repair(job, lease), handler, job_input, lease, problem)

    def _repair(self, job: Job, lease: Lease) -> Job:
        """Start the repair attempt: a new attempt, so clients drop the invalid output (its
        `running` has a higher attempt), run in this delivery within the same
        JOB_TIMEOUT_SECONDS, so the broker's response-time limit still holds."""
        lease.delivered = lease.delivered_chars()
        self._check(lease)
        started = self.store.start_attempt(job.id)
        if started.outcome != Attempt.STARTED or started.job is None:
            raise StreamClosed(job.id)  # it ended meanwhile (cancelled): close as it says
        repair = started.job
        logs.bind(attempt=repair.attempts)
        log.info(
            "repairing invalid model output", extra={"job_id": job.id, "attempt": repair.attempts}
        )
        return repair

    def _record_delivered(self, job: Job, lease: Lease, total: int) -> None:
        """Record `total` characters of output as delivered before they are written (see
        lib.events.Delivery): a cancel meanwhile stops the attempt, a lost lease too."""
        outcome = self.store.record_delivered(job.id, job.attempts, total, lease.typical or 1)
        if outcome == Delivered.TERMINAL:
            raise StreamClosed(job.id)
        if outcome != Delivered.RECORDED:
            lease.lost = True
            raise RetryableError("the job's lease was lost", code=LEASE_LOST, retry_after=1)

    def _generate(
        self,
        job: Job,
        handler: Handler,
        job_input: Any,
        lease: Lease,
        repair: str | None = None,
    ) -> Verdict:
        model = self.settings.model_for(job.tier, handler.step_kind(lease.step))
        typical = handler.expected_chars
        events = JobEvents(
            self.state,
            job.id,
            job.attempts,
            flush_ms=self.settings.delta_flush_ms,
            flush_chars=self.settings.delta_flush_chars,
            flush_tokens=self.settings.delta_flush_tokens,
            idle_flush_ms=self.settings.delta_flush_idle_ms,
            viewer=lambda: lease.watch,
            # Recorded before the write that passes the refund threshold (that decides), then
            # every quarter of the typical output: a cancel's ledger row then shows what was
            # read to within that, for a few database writes per watched job.
            delivery=Delivery(
                record=lambda total: self._record_delivered(job, lease, total),
                limit=typical * self.settings.refund_max_delivered_pct // 100,
                step=max(1, typical // 4),
            ),
        )
        lease.events = events
        events.running()
        with self._slots.hold(job.tier, model):
            ctx = Context(
                job_id=job.id,
                kind=job.kind,
                tier=job.tier,
                attempt=job.attempts,
                model=model,
                events=events,
                llm=self.llm,
                check=lambda: self._check(lease),
                expected_chars=typical,
                metrics=self.metrics,
                started=lease.started,
                repair=repair,
                read_image=self.read_image,
                step=lease.step,
                steps=lease.steps,
            )
            result = handler.handle(ctx, job_input)
        self._fenced(lease)
        payload = pipelines.on_success(self, job, lease, result.model_dump(mode="json"))
        if payload is None:  # a pipeline's step: the job is queued for its next step
            return Done(job.id, status=JobStatus.RUNNING, usage=ctx.usage)
        finished = self.store.finish(job.id, JobStatus.SUCCEEDED, result=payload)
        if finished.changed:
            events.succeeded(payload)
        elif finished.job:
            close_stream(self.state, finished.job)
        # Its service time (from the lease, as the admission sets count it) feeds the 429s'
        # next-slot estimate, in the release's own script.
        served = (job.kind, time.monotonic() - lease.started) if finished.changed else None
        self.state.release(job.id, lease.tier, lease.user_id, lease.token, served=served)
        return Done(job.id, status=JobStatus.SUCCEEDED, usage=ctx.usage)

    def _fenced(self, lease: Lease) -> None:
        """Raise lease_lost when the lease is lost or may have lapsed (not renewed in time)."""
        if not lease.lost and time.monotonic() - lease.renewed > self._fence:
            log.warning("lease not renewed in time; stopping", extra={"job_id": lease.job_id})
            lease.lost = True
        if lease.lost:
            raise RetryableError("the job's lease was lost", code=LEASE_LOST, retry_after=1)

    def _check(self, lease: Lease) -> None:
        if lease.done:
            raise StreamClosed(lease.job_id)
        self._fenced(lease)
        if time.monotonic() - lease.started > self.settings.job_timeout_seconds:
            raise RetryableError(
                "the attempt ran past JOB_TIMEOUT_SECONDS",
                code=ErrorCode.LLM_TIMEOUT,
                retry_after=5,
            )
        since = self._draining_since
        if since is not None and time.monotonic() - since > self.settings.worker_drain_seconds:
            raise RetryableError(
                "the worker is shutting down", code=ErrorCode.WORKER_SHUTTING_DOWN, retry_after=5
            )
