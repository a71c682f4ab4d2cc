"""Detached execution (EXECUTION_MODE=detached): answer QStash once the job is durably started,
then run it in the background.

A delivery takes the job's lease (`state.acquire`), a slot of its tier and model across every
worker process (`state.take_slot`) and starts the attempt in the database
(`store.start_attempt`), then answers 200; a bounded pool of threads per process (its share of
WORKER_MAX_JOBS) runs the attempt by the executor's own path (`Executor.run_started`) and acts on
its verdict instead of returning it to QStash:

- Done / GiveUp: nothing more (the executor already finished, failed or refunded the job);
- RetryAfter: the job is re-published with the deduplication id `<job id>-a<attempt>`, delayed
  as QStash would have delayed the inline retry (lib/queue/backoff.py: the Retry-After the
  attempt asked for, else JOB_RETRY_DELAY, else QStash's backoff min(86400, e^(2.5 n)) s); the
  attempt count and JOB_RETRIES decide the last attempt as inline.

QStash stays the only delivery engine: every retry and wait is a message the worker publishes,
with a deduplication id of its own, and a message carries the job's delivery generation, so a
superseded one is dropped. A job whose model is full waits in the model's ordered queue without
starting an attempt: its delivery is answered 200 and re-published after DETACHED_WAIT_SECONDS
(`<job id>-w<generation>`), and a freed slot wakes the head waiters at once
(`<job id>-w<generation>-wake`). A process that dies after its 200 lets its leases and slots
lapse; the reconciler (lib/reconcile.py) re-publishes its running jobs.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from lib import logs
from lib.errors import AppError
from lib.events import close_stream
from lib.executor import LEASE_LOST, Executor
from lib.leases import Lease
from lib.models import ErrorCode, Job, JobStatus, Tier
from lib.queue.backoff import RetryDelayError, backoff_seconds, retry_delay
from lib.queue.producer import Publisher
from lib.queue.wire import Delivery
from lib.queue_notify import notify_queue
from lib.state import Acquire, Take
from lib.store import Attempt, Started
from lib.verdict import Busy, Done, RetryAfter, Verdict

if TYPE_CHECKING:
    from lib.metrics import Metrics

log = logging.getLogger("cs.detached")

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


class Detached:
    """Starts deliveries and runs them in the background; one per worker process."""

    def __init__(self, executor: Executor, publisher: Publisher) -> None:
        self.executor = executor
        self.settings = executor.settings
        self.state = executor.state
        self.store = executor.store
        self.publisher = publisher
        self.metrics: Metrics | None = executor.metrics
        self.capacity = self.settings.max_jobs_per_process
        self._pool = ThreadPoolExecutor(self.capacity, thread_name_prefix="job")
        self._lock = threading.Condition()
        self._active = 0

    # Capacity ----------------------------------------------------------------------------------
    def active(self) -> int:
        """Jobs this process has started and not yet settled (or is starting now)."""
        with self._lock:
            return self._active

    def _reserve(self) -> bool:
        with self._lock:
            if self._active >= self.capacity:
                return False
            self._active += 1
            return True

    def _unreserve(self) -> None:
        with self._lock:
            self._active -= 1
            self._lock.notify_all()

    def shutdown(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the background jobs (drain first: they then stop with
        worker_shutting_down after WORKER_DRAIN_SECONDS and are re-published). Returns True
        when none is left."""
        self.executor.drain()
        with self._lock:
            done = self._lock.wait_for(lambda: self._active == 0, timeout)
        self._pool.shutdown(wait=False)
        return done

    # Delivery ----------------------------------------------------------------------------------
    def deliver(self, delivery: Delivery, message_id: str, max_retries: int) -> Verdict:
        """Start the delivered job and answer at once (Done: 200), or refuse it as inline would
        (RetryAfter while draining). Raises AppError when Redis or the database is down before
        the job started (nothing is left held)."""
        if self.executor.draining:
            return RetryAfter(ErrorCode.WORKER_SHUTTING_DOWN, "the worker is shutting down", 5)
        if not self._reserve():
            # Full: the message comes back later rather than using up a QStash retry (a 429
            # would, and its last one would fail the job through the failure callback).
            self._publish(
                delivery.job_id,
                delivery.user_id,
                delivery.tier,
                model="",
                dedup_id=f"{delivery.job_id}-full-{message_id}",
                delay=self.settings.detached_wait_seconds,
                gen=delivery.gen,
            )
            log.info("worker full; delivery re-published", extra={"job_id": delivery.job_id})
            return Done(delivery.job_id, note="the worker is full; re-published")
        started = False
        try:
            verdict, started = self._start(delivery, max_retries)
            return verdict
        finally:
            if not started:
                self._unreserve()

    def _start(self, delivery: Delivery, max_retries: int) -> tuple[Verdict, bool]:
        job_id, user_id, tier = delivery.job_id, delivery.user_id, delivery.tier
        lease = Lease(job_id, tier, user_id, uuid.uuid4().hex)
        acquired = self.state.acquire(job_id, tier, user_id, lease.token)
        if acquired.outcome == Acquire.DONE:
            self.state.release(job_id, tier, user_id)
            return Done(job_id, status=acquired.status, note="already finished"), False
        if acquired.outcome == Acquire.BUSY:
            # As inline: come back once the lease may have lapsed. Dropping the duplicate would
            # strand a job whose holder gave up without a word (a fenced attempt whose lease
            # Redis still keeps), and a cancel that Redis missed would then never close its
            # stream; the reconciler only looks at jobs that are not terminal.
            wait = max(1, math.ceil((acquired.remaining_ms or 1000) / 1000))
            return Busy("busy", "another attempt holds this job", wait), False
        lease.watch = acquired.watch
        try:
            return self._start_held(delivery, lease, max_retries)
        except AppError:
            try:
                self.state.release(job_id, tier, user_id, lease.token, slots=False)
            except AppError:
                log.warning("could not release the lease", extra={"job_id": job_id})
            raise

    def _start_held(
        self, delivery: Delivery, lease: Lease, max_retries: int
    ) -> tuple[Verdict, bool]:
        s = self.settings
        job_id, user_id, tier = delivery.job_id, delivery.user_id, delivery.tier
        job = self.store.get_job(job_id, user_id)
        if job is None or job.status in TERMINAL:
            if job is not None:
                close_stream(self.state, job)
            self.state.release(job_id, tier, user_id, lease.token)
            return Done(job_id, status=job.status if job else None, note="not runnable"), False
        model = s.model_for(job.tier, job.kind)
        take = self.state.take_slot(
            job_id,
            tier,
            model,
            limit=self._limit(tier),
            generation=delivery.gen,
            wait_seconds=s.detached_wait_seconds,
            user_id=user_id,
        )
        if take.outcome == Take.STALE:
            self.state.release(job_id, tier, user_id, lease.token, slots=False)
            return Done(job_id, note="superseded by a newer message"), False
        if take.outcome == Take.WAIT:
            self.state.release(job_id, tier, user_id, lease.token, slots=False)
            self._wait(job, user_id, model, take.generation, take.waits, take.ahead)
            return Done(job_id, status=job.status, note="waiting for the model"), False
        lease.slot = (tier, model)
        self.executor.leases.add(lease)
        try:
            started = self.store.start_attempt(job_id)
        except AppError:
            self.executor.leases.remove(lease)
            self._release_slot(job_id, tier, model, ended=False)
            raise
        if started.outcome != Attempt.STARTED:
            # Unknown or already terminal: settled synchronously, nothing runs.
            self.executor.leases.remove(lease)
            self._release_slot(job_id, tier, model, ended=True)
            return self.executor.run_started(lease, started, max_retries), False
        if self.metrics:
            self.metrics.running(+1)
        self._pool.submit(self._run, lease, started, model, take.generation, max_retries)
        return Done(job_id, status=JobStatus.RUNNING, note="started"), True

    def _limit(self, tier: str) -> int:
        s = self.settings
        return s.llm_max_concurrency_paid if tier == Tier.PAID else s.llm_max_concurrency_free

    def _wait(self, job: Job, user_id: str, model: str, gen: int, waits: int, ahead: int) -> None:
        """The job waits for its model: published again after DETACHED_WAIT_SECONDS, unless a
        freed slot wakes it first. No attempt starts and no retry is used."""
        if self.metrics:
            self.metrics.waited(job.tier, model)
        log.info(
            "waiting for the model",
            extra={"job_id": job.id, "model": model, "waits": waits, "ahead": ahead},
        )
        # Where it stands, for its readers and GET (before the wait message goes out).
        notify_queue(
            self.state,
            job.tier,
            model,
            limit=self._limit(job.tier),
            op="wait",
            job_id=job.id,
            kind=job.kind,
        )
        self._publish(
            job.id,
            user_id,
            job.tier,
            model=model,
            dedup_id=f"{job.id}-w{gen}",
            delay=self.settings.detached_wait_seconds,
            gen=gen,
        )

    # Background --------------------------------------------------------------------------------
    def _run(self, lease: Lease, started: Started, model: str, gen: int, retries: int) -> None:
        job_id = lease.job_id
        try:
            with logs.job_scope(job_id, user_id=lease.user_id, tier=lease.tier):
                kind = started.job.kind if started.job else ""
                limit = self._limit(lease.tier)
                notify_queue(
                    self.state, lease.tier, model, limit=limit, op="start", job_id=job_id, kind=kind
                )
                try:
                    verdict = self.executor.run_started(lease, started, retries)
                except AppError as exc:
                    # Redis or the store failed before the attempt settled: let the lease go and
                    # try again by the broker's backoff (the reconciler heals it otherwise).
                    log.warning("attempt failed to settle", extra={"job_id": job_id})
                    try:
                        self.state.release(
                            job_id, lease.tier, lease.user_id, lease.token, slots=False
                        )
                    except AppError:
                        pass
                    verdict = RetryAfter(exc.code, exc.message)
                except Exception:
                    log.exception("background attempt crashed", extra={"job_id": job_id})
                    verdict = RetryAfter(ErrorCode.INTERNAL, "internal error", 5)
                self._after(lease, started, model, gen, verdict)
        finally:
            self.executor.leases.remove(lease)
            if self.metrics:
                self.metrics.running(-1)
            self._unreserve()

    def _after(
        self, lease: Lease, started: Started, model: str, gen: int, verdict: Verdict
    ) -> None:
        """Act on the attempt's verdict: free the model slot (waking its head waiters), and
        re-publish the job when it is to be retried."""
        job_id, tier = lease.job_id, lease.tier
        retry = isinstance(verdict, RetryAfter)
        self._release_slot(job_id, tier, model, ended=not retry)
        if not isinstance(verdict, RetryAfter):
            return
        attempt = lease.events.attempt if lease.events is not None else 0
        attempt = attempt or (started.job.attempts if started.job else 1)
        if verdict.code == LEASE_LOST:
            # Another attempt may hold the job: look again once its lease could have lapsed.
            delay = float(self.settings.lease_ttl_seconds)
            dedup = f"{job_id}-a{attempt}-lost"
        else:
            try:
                delay = retry_delay(self.settings.job_retry_delay, attempt, verdict.seconds)
            except RetryDelayError:
                delay = backoff_seconds(attempt)
            dedup = f"{job_id}-a{attempt}"
        if self.metrics:
            self.metrics.republished("retry")
        self._publish(
            job_id, lease.user_id, tier, model=model, dedup_id=dedup, delay=delay, gen=gen
        )
        log.info(
            "retry re-published",
            extra={"job_id": job_id, "attempt": attempt, "delay": round(delay, 3)},
        )

    def _release_slot(self, job_id: str, tier: str, model: str, *, ended: bool) -> None:
        try:
            waiters = self.state.release_slot(
                job_id, tier, model, limit=self._limit(tier), ended=ended
            )
        except AppError:
            log.warning("could not release the model slot; it lapses", extra={"job_id": job_id})
            return
        for waiter, gen, user_id in waiters:
            if not user_id:
                continue
            if self.metrics:
                self.metrics.republished("wake")
            self._publish(
                waiter, user_id, tier, model=model, dedup_id=f"{waiter}-w{gen}-wake", gen=gen
            )
        notify_queue(self.state, tier, model, limit=self._limit(tier), op="end", job_id=job_id)

    def _publish(
        self,
        job_id: str,
        user_id: str,
        tier: str,
        *,
        model: str,
        dedup_id: str,
        delay: float | None = None,
        gen: int | None = None,
    ) -> None:
        """Publish a delivery of the job; a broker outage is logged, not raised: the job's
        row is stale then and the reconciler re-publishes it."""
        try:
            self.publisher.publish(
                job_id,
                user_id=user_id,
                tier=tier,
                model=model,
                dedup_id=dedup_id,
                delay=delay,
                gen=gen,
            )
        except AppError:
            log.warning("could not re-publish; the reconciler will", extra={"job_id": job_id})
