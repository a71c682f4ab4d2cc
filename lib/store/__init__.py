"""Durable state: jobs, coins and the ledger, through the SQL functions in supabase/migrations.

`Store` is the only interface the rest of the code uses. Every method is one SQL function call,
so every transition is atomic in the database, and the two backends (psycopg, supabase-py) behave
identically; `tests/test_store.py` runs one contract suite against both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lib.models import Job, Me
from lib.store.backends import PostgresBackend, StoreBackend, SupabaseBackend

__all__ = [
    "Store",
    "StoreBackend",
    "Attempt",
    "Delivered",
    "Cancel",
    "Started",
    "Finished",
    "for_worker",
    "from_settings",
]


class Attempt(StrEnum):
    """What `cs_start_attempt` did."""

    STARTED = "started"
    TERMINAL = "terminal"  # the job had ended: nothing to run
    NOT_FOUND = "not_found"


class Delivered(StrEnum):
    """What `cs_record_delivered` did."""

    RECORDED = "recorded"
    TERMINAL = "terminal"  # the job ended: write nothing more
    STALE = "stale"  # another attempt runs the job
    NOT_FOUND = "not_found"


class Cancel(StrEnum):
    """What `cs_cancel` did."""

    CANCELLED = "cancelled"
    ALREADY_FINISHED = "already_finished"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Started:
    """The result of `start_attempt`."""

    outcome: Attempt
    job: Job | None
    user_id: str | None
    input: dict[str, Any] | None
    # A pipeline's step to run and its finished steps' results (0 and {} for a kind).
    step: int = 0
    steps: dict[str, Any] = field(default_factory=dict)
    # The job's attempts before this step began: the step's own count is attempts - this.
    attempts_base: int = 0


@dataclass(frozen=True)
class Finished:
    """The result of `finish`: whether this call made the job terminal, and the job after it.
    `refund` is the refund rule this call applied (refund, no_refund_delivered) or None."""

    changed: bool
    job: Job | None
    user_id: str | None
    refund: str | None = None


def _job(data: Any) -> Job | None:
    return Job.model_validate(data) if data else None


class Store:
    """Domain operations over a `StoreBackend`.

    `refund_max_delivered_pct` is REFUND_MAX_DELIVERED_PCT: a failed or cancelled job with more
    than that share of its kind's typical output delivered is not refunded (the SQL decides).
    """

    def __init__(
        self,
        backend: StoreBackend,
        *,
        initial_coins: int,
        free_daily: int,
        refund_max_delivered_pct: int = 25,
    ) -> None:
        self.backend = backend
        self.initial_coins = initial_coins
        self.free_daily = free_daily
        self.refund_max_delivered_pct = refund_max_delivered_pct

    def submit_job(
        self,
        *,
        job_id: str,
        user_id: str,
        kind: str,
        tier: str,
        cost: int,
        input: dict[str, Any],
        idempotency_key: str | None,
        request_hash: str,
    ) -> dict[str, Any]:
        """The producer's submit, in one SQL call: idempotency, the tier choice (`tier` is
        auto, paid or free), the charge and the insert. Outcome: created (job), existing (job,
        enqueued), idempotency_conflict or quota_exhausted (coins, free_jobs_left_today)."""
        result: dict[str, Any] = self.backend.call(
            "cs_submit_job",
            {
                "p_job_id": job_id,
                "p_user_id": user_id,
                "p_kind": kind,
                "p_tier": tier,
                "p_cost": cost,
                "p_input": input,
                "p_idempotency_key": idempotency_key,
                "p_request_hash": request_hash,
                "p_initial_coins": self.initial_coins,
                "p_free_daily": self.free_daily,
            },
        )
        return result

    def withdraw_submit(self, job_id: str) -> bool:
        """Take back a job just submitted that was never admitted: refund it and delete it and
        its idempotency key. True if this call did it; False once a delivery touched it."""
        result = self.backend.call("cs_withdraw_submit", {"p_job_id": job_id})
        return bool(result and result.get("outcome") == "withdrawn")

    def submit(
        self,
        *,
        job_id: str,
        user_id: str,
        kind: str,
        tier: str,
        cost: int,
        input: dict[str, Any],
        idempotency_key: str | None,
        request_hash: str,
    ) -> dict[str, Any]:
        """Insert and charge a job of a chosen tier (paid or free), not yet enqueued, in one
        transaction: what the producer did before `submit_job`, kept for jobs made without a
        producer (the worker's tests) and the sweeper that heals them. Outcome: created,
        existing, idempotency_conflict or quota_exhausted."""
        result: dict[str, Any] = self.backend.call(
            "cs_submit",
            {
                "p_job_id": job_id,
                "p_user_id": user_id,
                "p_kind": kind,
                "p_tier": tier,
                "p_cost": cost,
                "p_input": input,
                "p_idempotency_key": idempotency_key,
                "p_request_hash": request_hash,
                "p_initial_coins": self.initial_coins,
                "p_free_daily": self.free_daily,
            },
        )
        return result

    def mark_enqueued(self, job_id: str) -> None:
        """Record that the broker accepted a job inserted by `submit` (not yet enqueued)."""
        self.backend.call("cs_mark_enqueued", {"p_job_id": job_id})

    def abort_submit(self, job_id: str, code: str, message: str) -> bool:
        """Fail and refund a job the broker refused; True if this call did it (False once a
        delivery started it)."""
        result = self.backend.call(
            "cs_abort_submit", {"p_job_id": job_id, "p_error": {"code": code, "message": message}}
        )
        return bool(result and result.get("outcome") == "aborted")

    def start_attempt(self, job_id: str) -> Started:
        """Begin a delivery attempt: running, attempts + 1, unless the job is terminal."""
        r = self.backend.call("cs_start_attempt", {"p_job_id": job_id})
        return Started(
            Attempt(r["outcome"]),
            _job(r.get("job")),
            r.get("user_id"),
            r.get("input"),
            int(r.get("step") or 0),
            r.get("steps") or {},
            int(r.get("attempts_base") or 0),
        )

    def advance_step(
        self,
        job_id: str,
        attempt: int,
        step: int,
        name: str,
        result: dict[str, Any],
        *,
        chars: int,
        typical_chars: int,
    ) -> str:
        """Keep a pipeline step's result and queue the job for its next step (whose attempts
        count from the job's current attempts). Returns advanced, terminal (cancelled
        meanwhile), stale (another attempt or step holds the job) or not_found."""
        r = self.backend.call(
            "cs_advance_step",
            {
                "p_job_id": job_id,
                "p_attempt": attempt,
                "p_step": step,
                "p_name": name,
                "p_result": result,
                "p_chars": chars,
                "p_typical_chars": typical_chars,
            },
        )
        return str(r["outcome"])

    def record_delivered(
        self, job_id: str, attempt: int, chars: int, typical_chars: int
    ) -> Delivered:
        """Record that `attempt` has delivered `chars` characters of output (the most any
        attempt delivered is kept), before they are written. Returns recorded, terminal (the
        job ended: write nothing more), stale (another attempt runs it) or not_found."""
        r = self.backend.call(
            "cs_record_delivered",
            {
                "p_job_id": job_id,
                "p_attempt": attempt,
                "p_chars": chars,
                "p_typical_chars": typical_chars,
            },
        )
        return Delivered(r["outcome"])

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        delivered_chars: int | None = None,
        typical_chars: int | None = None,
    ) -> Finished:
        """Make the job terminal once; failed/cancelled apply the refund rule in the same
        transaction, counting `delivered_chars` (the attempt's final count, if it ran one)."""
        r = self.backend.call(
            "cs_finish",
            {
                "p_job_id": job_id,
                "p_status": status,
                "p_result": result,
                "p_error": error,
                "p_delivered_chars": delivered_chars,
                "p_typical_chars": typical_chars,
                "p_max_pct": self.refund_max_delivered_pct,
            },
        )
        return Finished(bool(r["changed"]), _job(r.get("job")), r.get("user_id"), r.get("refund"))

    def cancel(self, job_id: str, user_id: str) -> tuple[Cancel, Job | None]:
        """Cancel the user's job and apply the refund rule to the output recorded as delivered
        so far: (cancelled | already_finished | not_found, job)."""
        r = self.backend.call(
            "cs_cancel",
            {
                "p_job_id": job_id,
                "p_user_id": user_id,
                "p_max_pct": self.refund_max_delivered_pct,
            },
        )
        return Cancel(r["outcome"]), _job(r.get("job"))

    def keep_partial(self, job_id: str, attempt: int, partial: str) -> str:
        """Keep `partial`, the output `attempt` delivered before a cancel stopped it, as the
        cancelled job's `result.partial`. Returns kept, or unchanged (not cancelled, already
        kept, or another attempt ran last)."""
        r = self.backend.call(
            "cs_keep_partial",
            {"p_job_id": job_id, "p_attempt": attempt, "p_partial": partial},
        )
        return str(r["outcome"])

    def get_job(self, job_id: str, user_id: str) -> Job | None:
        return _job(self.backend.call("cs_get_job", {"p_job_id": job_id, "p_user_id": user_id}))

    def list_jobs(self, user_id: str, limit: int = 20, before: str | None = None) -> list[Job]:
        rows = self.backend.call(
            "cs_list_jobs", {"p_user_id": user_id, "p_limit": limit, "p_before": before}
        )
        return [Job.model_validate(row) for row in rows or []]

    def me(self, user_id: str) -> Me:
        return Me.model_validate(
            self.backend.call(
                "cs_me",
                {
                    "p_user_id": user_id,
                    "p_initial_coins": self.initial_coins,
                    "p_free_daily": self.free_daily,
                },
            )
        )

    def sweep_unenqueued(self, older_than_seconds: int) -> list[str]:
        """Fail and refund jobs whose submit died before the broker accepted them."""
        ids = self.backend.call("cs_sweep_unenqueued", {"p_older_than_seconds": older_than_seconds})
        return [str(i) for i in ids or []]

    def ping(self) -> None:
        self.backend.ping()

    def close(self) -> None:
        self.backend.close()


def from_settings(
    settings: Any,
    *,
    pool_size: int = 10,
    timeout: float = 5.0,
    application_name: str = "careershaper",
) -> Store:
    """Build the configured store: psycopg when DATABASE_URL is used, else supabase-py."""
    backend: StoreBackend
    if settings.uses_postgres:
        backend = PostgresBackend(
            settings.database_url,
            max_size=pool_size,
            timeout=timeout,
            application_name=application_name,
        )
    else:
        backend = SupabaseBackend(settings.supabase_url, settings.supabase_service_role_key)
    return Store(
        backend,
        initial_coins=settings.initial_coins,
        free_daily=settings.free_daily_jobs,
        refund_max_delivered_pct=settings.refund_max_delivered_pct,
    )


def worker_pool_size(settings: Any) -> int:
    """Each worker process's share of DB_MAX_CONNECTIONS, split evenly over WEB_CONCURRENCY.

    Config refuses DB_MAX_CONNECTIONS below WEB_CONCURRENCY, so every process gets at least one
    and all of them together never hold more than DB_MAX_CONNECTIONS.
    """
    return max(1, int(settings.db_max_connections) // int(settings.web_concurrency))


def for_worker(settings: Any) -> Store:
    """The worker process's store: its share of DB_MAX_CONNECTIONS, named `careershaper-worker`.

    Supabase's session pooler (port 5432) gives each client connection a server connection and
    refuses clients past its pool size (15 on the small plans): docs/deploy.md.
    """
    return from_settings(
        settings, pool_size=worker_pool_size(settings), application_name="careershaper-worker"
    )
