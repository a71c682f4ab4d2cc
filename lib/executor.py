"""Run one delivery of one job: lease, attempt, result, events, release.

The executor does not depend on HTTP: `execute()` takes the delivery's fields and returns an
`Outcome` (status, headers, body) that the worker's Flask view serialises. Every effect is made
once by the SQL functions and the Lua scripts, so a duplicate delivery, sequential or concurrent,
never runs a handler twice at the same time and never overwrites a terminal job.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lib import handlers, logs, tracing
from lib.config import Settings
from lib.errors import AppError, PermanentError, RetryableError
from lib.events import Delivery, JobEvents, StreamClosed, emit_terminal
from lib.handlers.base import Context, Handler
from lib.models import ErrorCode, Job, JobStatus
from lib.state import State
from lib.store import Store

log = logging.getLogger("cs.executor")

NON_RETRYABLE = {"Upstash-NonRetryable-Error": "true"}
LEASE_LOST = "lease_lost"


@dataclass
class Outcome:
    """What the worker answers the broker."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Lease:
    job_id: str
    tier: str
    user_id: str
    token: str
    lost: bool = False
    done: str | None = None
    started: float = field(default_factory=time.monotonic)
    # When the last ACQUIRE/RENEW that succeeded was sent: Redis keeps the lease at least
    # LEASE_TTL_SECONDS after that, so the attempt may write until shortly before then.
    renewed: float = field(default_factory=time.monotonic)
    # When the admission deadlines were last pushed forward (ACQUIRE does it first).
    admitted: float = field(default_factory=time.monotonic)
    # The transport of a live SSE reader ("tcp", "rest"), or None: the flush policy reads it.
    watch: str | None = None
    # The attempt's event writer, so a retry writes what it holds (lib.events.JobEvents).
    events: Any = None
    # Output delivered by earlier attempts of this delivery (a repair's first attempt), and the
    # kind's typical output size: what the refund rule weighs when the job fails or is cancelled.
    delivered: int = 0
    typical: int | None = None

    def delivered_chars(self) -> int:
        """The most output any attempt of this delivery wrote to the job's stream."""
        return max(self.delivered, self.events.delivered if self.events is not None else 0)


class Leases:
    """One heartbeat thread renews every running attempt's lease and admission deadlines."""

    def __init__(self, state: State, interval: float, admission_ttl: float = 1800) -> None:
        self.state = state
        self.interval = interval
        # Admission deadlines last ADMISSION_TTL_SECONDS: push them forward once half has gone.
        self.admission_refresh = admission_ttl / 2
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()
        # New viewers are announced on a channel, so a held attempt starts streaming at once.
        self._listener = threading.Thread(target=self._listen, name="watch-listener", daemon=True)
        self._listener.start()

    def add(self, lease: _Lease) -> None:
        with self._lock:
            self._held[lease.token] = lease

    def remove(self, lease: _Lease) -> None:
        with self._lock:
            self._held.pop(lease.token, None)

    def count(self) -> int:
        with self._lock:
            return len(self._held)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            sent = time.monotonic()
            refresh = [sent - x.admitted >= self.admission_refresh for x in held]
            try:
                # One round trip for every lease of this process: a per-lease loop grows with
                # the number of running jobs and, under load, outlasts the lease itself.
                answers = self.state.renew_many(
                    [
                        (x.job_id, x.tier, x.user_id, x.token, again)
                        for x, again in zip(held, refresh, strict=True)
                    ]
                )
            except Exception:  # Redis down: the attempts fence themselves (Executor._fenced)
                log.warning("lease renewal failed", extra={"running": len(held)})
                continue
            for lease, again, (ok, done, watch) in zip(held, refresh, answers, strict=True):
                if ok:
                    lease.renewed = sent
                    if again:
                        lease.admitted = sent
                lease.lost = lease.lost or not ok
                lease.done = lease.done or done  # a cancel heard meanwhile stays heard
                lease.watch = watch

    def _listen(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                for signal in self.state.watchers(self._stop):
                    delay = 1.0
                    with self._lock:
                        for lease in self._held.values():
                            if lease.job_id != signal.job_id:
                                continue
                            if signal.done:  # a cancel: the attempt stops at its next check
                                lease.done = signal.done
                            else:
                                lease.watch = signal.watch
            except Exception:  # noqa: BLE001 - Redis down: the heartbeat still reports viewers
                log.warning("watch channel unavailable; viewers are noticed at the next heartbeat")
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def stop(self) -> None:
        self._stop.set()


class Executor:
    """Executes deliveries; thread-safe, one instance per worker process."""

    def __init__(
        self, settings: Settings, store: Store, state: State, llm: Any, metrics: Any = None
    ) -> None:
        self.settings = settings
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
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    # Shutdown ----------------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop taking work; running attempts get WORKER_DRAIN_SECONDS to finish."""
        if self._draining_since is None:
            self._draining_since = time.monotonic()
            log.info("draining", extra={"running": self.leases.count()})

    @property
    def draining(self) -> bool:
        return self._draining_since is not None

    def running(self) -> int:
        return self.leases.count()

    # Delivery ----------------------------------------------------------------------------------
    def execute(
        self, job_id: str, user_id: str, tier: str, *, retried: int, max_retries: int
    ) -> Outcome:
        """Run one delivery of a job and say what to answer the broker.

        Meanwhile every log line carries the job's fields (`lib.logs.job_scope`) and, with
        tracing on, the delivery is one `job.attempt` span (`lib.tracing`)."""
        with (
            logs.job_scope(job_id, user_id=user_id, tier=tier),
            tracing.attempt_span(job_id, tier=tier, retried=retried),
        ):
            outcome = self._execute(job_id, user_id, tier, max_retries=max_retries)
            tracing.annotate(http_status=outcome.status)
            return outcome

    def _execute(self, job_id: str, user_id: str, tier: str, *, max_retries: int) -> Outcome:
        if self.draining:
            return _retry("the worker is shutting down", ErrorCode.WORKER_SHUTTING_DOWN, 5)
        lease = _Lease(job_id, tier, user_id, uuid.uuid4().hex)
        status, detail = self.state.acquire(job_id, tier, user_id, lease.token)
        if status == "done":
            self.state.release(job_id, tier, user_id)
            return Outcome(200, {"job_id": job_id, "status": detail, "note": "already finished"})
        if status == "busy":
            wait = max(1, math.ceil(int(detail or 1000) / 1000))
            return _retry("another attempt holds this job", "busy", wait, status=429)
        lease.watch = str(detail) if detail else None
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

    def _attempt(self, lease: _Lease, *, max_retries: int) -> Outcome:
        job_id = lease.job_id
        started = self.store.start_attempt(job_id)
        if started.outcome == "not_found":
            log.warning("delivery for an unknown job", extra={"job_id": job_id})
            self.state.release(job_id, lease.tier, lease.user_id, lease.token)
            return Outcome(200, {"job_id": job_id, "note": "unknown job"})
        job = started.job
        assert job is not None
        # The last attempt is decided by the job's own attempt count (this one included) against
        # the signed `retries`, never by the unsigned Upstash-Retried header.
        last = job.attempts > max_retries
        if started.outcome == "terminal":
            self._close(job)
            self.state.release(job_id, lease.tier, lease.user_id, lease.token)
            return Outcome(200, {"job_id": job_id, "status": job.status})
        extra = {"job_id": job_id, "attempt": job.attempts, "kind": job.kind, "tier": job.tier}
        logs.bind(attempt=job.attempts, kind=job.kind)
        tracing.annotate(attempt=job.attempts, kind=job.kind)
        log.info("attempt started", extra=extra)
        began = time.monotonic()
        try:
            outcome = self._run(job, started.input or {}, lease)
        except StreamClosed:
            outcome = self._finish(
                job, lease, JobStatus.CANCELLED, error={"code": "cancelled", "message": "cancelled"}
            )
            self._keep_partial(lease)
        except PermanentError as exc:
            outcome = self._fail(job, lease, exc.code, exc.message)
        except RetryableError as exc:
            if exc.code == LEASE_LOST:
                # Another attempt may own the job now: write nothing, decide nothing, let the
                # broker redeliver (it then finds the job busy, done, or free to run).
                return _retry(exc.message, exc.code, exc.retry_after or 1)
            outcome = self._retryable(
                job,
                lease,
                exc.code,
                exc.message,
                exc.retry_after,
                last,
                status=429 if exc.status == 429 else 503,
            )
        except Exception:
            log.exception("attempt crashed", extra=extra)
            outcome = self._retryable(job, lease, ErrorCode.INTERNAL, "internal error", 5, last)
        if lease.events is not None:  # a repair attempt ran after the first
            extra["attempt"] = lease.events.attempt
        log.info(
            "attempt ended",
            extra={
                **extra,
                "http_status": outcome.status,
                "seconds": round(time.monotonic() - began, 3),
            },
        )
        if self.metrics:
            self.metrics.attempt(
                job, outcome.status, time.monotonic() - began, outcome.body.get("status")
            )
        return outcome

    def _run(self, job: Job, raw_input: dict[str, Any], lease: _Lease) -> Outcome:
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
            problem = _problem(exc)
        # Invalid model output (a prompt injection can cause it) gets one repair attempt.
        return self._generate(self._repair(job, lease), handler, job_input, lease, problem)

    def _repair(self, job: Job, lease: _Lease) -> Job:
        """Start the repair attempt: a new attempt, so clients drop the invalid output (its
        `running` has a higher attempt), run in this delivery within the same
        JOB_TIMEOUT_SECONDS, so the broker's response-time limit still holds."""
        lease.delivered = lease.delivered_chars()
        self._check(lease)
        started = self.store.start_attempt(job.id)
        if started.outcome != "started" or started.job is None:
            raise StreamClosed(job.id)  # it ended meanwhile (cancelled): close as it says
        repair = started.job
        logs.bind(attempt=repair.attempts)
        log.info(
            "repairing invalid model output", extra={"job_id": job.id, "attempt": repair.attempts}
        )
        return repair

    def _record_delivered(self, job: Job, lease: _Lease, total: int) -> None:
        """Record `total` characters of output as delivered before they are written (see
        lib.events.Delivery): a cancel meanwhile stops the attempt, a lost lease too."""
        outcome = self.store.record_delivered(job.id, job.attempts, total, lease.typical or 1)
        if outcome == "terminal":
            raise StreamClosed(job.id)
        if outcome != "recorded":
            lease.lost = True
            raise RetryableError("the job's lease was lost", code=LEASE_LOST, retry_after=1)

    def _generate(
        self,
        job: Job,
        handler: Handler,
        job_input: Any,
        lease: _Lease,
        repair: str | None = None,
    ) -> Outcome:
        model = self.settings.model_for(job.tier, job.kind)
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
        with self._model_slot(job.tier, model):
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
            )
            result = handler.handle(ctx, job_input)
        payload = result.model_dump(mode="json")
        self._fenced(lease)
        finished = self.store.finish(job.id, JobStatus.SUCCEEDED, result=payload)
        if finished.changed:
            events.succeeded(payload)
        elif finished.job:
            self._close(finished.job)
        self.state.release(job.id, lease.tier, lease.user_id, lease.token)
        return Outcome(200, {"job_id": job.id, "status": "succeeded", "usage": ctx.usage})

    def _fenced(self, lease: _Lease) -> None:
        """Raise lease_lost when the lease is lost or may have lapsed (not renewed in time)."""
        if not lease.lost and time.monotonic() - lease.renewed > self._fence:
            log.warning("lease not renewed in time; stopping", extra={"job_id": lease.job_id})
            lease.lost = True
        if lease.lost:
            raise RetryableError("the job's lease was lost", code=LEASE_LOST, retry_after=1)

    def _check(self, lease: _Lease) -> None:
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

    def _model_slot(self, tier: str, model: str) -> _Held:
        key = f"{tier}:{model}"
        with self._slots_lock:
            slot = self._slots.get(key)
            if slot is None:
                limit = (
                    self.settings.llm_max_concurrency_paid
                    if tier == "paid"
                    else self.settings.llm_max_concurrency_free
                )
                slot = self._slots[key] = threading.BoundedSemaphore(limit)
        if not slot.acquire(timeout=0.5):
            raise RetryableError(
                "model concurrency limit reached",
                code=ErrorCode.RATE_LIMITED,
                status=429,
                retry_after=10,
            )
        return _Held(slot)

    # Endings -----------------------------------------------------------------------------------
    def _finish(
        self, job: Job, lease: _Lease, status: JobStatus, *, error: dict[str, Any]
    ) -> Outcome:
        finished = self.store.finish(
            job.id,
            status,
            error=error,
            delivered_chars=lease.delivered_chars(),
            typical_chars=lease.typical,
        )
        final = finished.job or job
        self._close(final)
        self.state.release(job.id, lease.tier, lease.user_id, lease.token)
        return Outcome(200, {"job_id": job.id, "status": final.status})

    def _keep_partial(self, lease: _Lease) -> None:
        """A cancelled attempt's delivered output becomes the job's `result.partial`."""
        events = lease.events
        if events is None or not events.written:
            return
        try:
            self.store.keep_partial(lease.job_id, events.attempt, "".join(events.written))
        except AppError:
            log.warning("could not keep the partial output", extra={"job_id": lease.job_id})

    def _fail(self, job: Job, lease: _Lease, code: str, message: str) -> Outcome:
        finished = self.store.finish(
            job.id,
            JobStatus.FAILED,
            error={"code": code, "message": message},
            delivered_chars=lease.delivered_chars(),
            typical_chars=lease.typical,
        )
        log.info("job failed", extra={"job_id": job.id, "code": code, "refund": finished.refund})
        self._close(finished.job or job)
        self.state.release(job.id, lease.tier, lease.user_id, lease.token)
        return Outcome(
            489, {"job_id": job.id, "status": "failed", "code": code}, dict(NON_RETRYABLE)
        )

    def _retryable(
        self,
        job: Job,
        lease: _Lease,
        code: str,
        message: str,
        retry_after: float | None,
        last: bool,
        status: int = 503,
    ) -> Outcome:
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
        return _retry(message, code, delay, status=status)

    def _close(self, job: Job) -> None:
        """Write the job's terminal events if nobody has yet (idempotent)."""
        emit_terminal(
            self.state,
            job.id,
            job.status,
            result=job.result,
            error=job.error.model_dump() if job.error else None,
            attempt=job.attempts,
        )

    # Failure callback --------------------------------------------------------------------------
    def fail_delivery(self, job_id: str, user_id: str, tier: str, reason: str) -> Outcome:
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
            return _retry("an attempt of this job is running", "busy", held_ms / 1000, status=429)
        finished = self.store.finish(
            job_id,
            JobStatus.FAILED,
            error={"code": ErrorCode.RETRIES_EXHAUSTED, "message": reason},
        )
        if finished.job:
            self._close(finished.job)
            if finished.changed and self.metrics:
                self.metrics.finished(finished.job, "failed")
        self.state.release(job_id, tier, user_id)
        log.info("failure callback", extra={"job_id": job_id, "changed": finished.changed})
        return Outcome(200, {"job_id": job_id, "changed": finished.changed})

    # Sweeper -----------------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Fail and refund jobs whose submit died between insert and publish; close their
        streams. Safe to run from every worker at once (the SQL skips locked rows)."""
        swept = self.store.sweep_unenqueued(self.settings.sweep_after_seconds)
        for job_id in swept:
            log.warning("swept a job that was never enqueued", extra={"job_id": job_id})
            emit_terminal(
                self.state,
                job_id,
                JobStatus.FAILED,
                result=None,
                error={"code": ErrorCode.UNAVAILABLE, "message": "the job was never queued"},
                attempt=0,
            )
        return swept

    def start_sweeper(self) -> None:
        """Run `sweep` every SWEEP_INTERVAL_SECONDS in a daemon thread (0 disables it)."""
        interval = self.settings.sweep_interval_seconds
        if interval <= 0:
            return

        def loop() -> None:
            while not self.leases._stop.wait(interval):  # noqa: SLF001 - shared stop event
                try:
                    self.sweep()
                except Exception:
                    log.warning("sweep failed; will retry", exc_info=True)

        threading.Thread(target=loop, name="sweeper", daemon=True).start()

    def close(self) -> None:
        self.leases.stop()


class _Held:
    """An acquired model-concurrency slot; leaving the `with` block releases it."""

    def __init__(self, slot: threading.BoundedSemaphore) -> None:
        self.slot = slot

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.slot.release()


def _problem(exc: PermanentError) -> str:
    """What was wrong with an invalid answer, for the repair prompt: the error and where the
    result did not validate (field paths and pydantic's messages, never the output itself)."""
    details = exc.details if isinstance(exc.details, list) else []
    where = "; ".join(
        f"{'.'.join(str(p) for p in d.get('loc', [])) or 'answer'}: {d.get('msg', '')}"
        for d in details
        if isinstance(d, dict)
    )
    return f"{exc.message} ({where})" if where else exc.message


def _retry(message: str, code: str, retry_after: float | None, *, status: int = 503) -> Outcome:
    body = {"error": {"code": code, "message": message}}
    if retry_after is None:
        return Outcome(status, body, {})
    return Outcome(status, body, {"Retry-After": str(max(1, math.ceil(retry_after)))})
