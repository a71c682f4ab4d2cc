"""Durable state: jobs, coins and the ledger, through the SQL functions in supabase/migrations.

`Store` is the only interface the rest of the code uses. Every method is one SQL function call,
so every transition is atomic in the database, and the two backends (psycopg, supabase-py) behave
identically; `tests/test_store.py` runs one contract suite against both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lib.models import Job, Me
from lib.store.backends import PostgresBackend, StoreBackend, SupabaseBackend

__all__ = ["Store", "StoreBackend", "Started", "Finished", "for_worker", "from_settings"]


@dataclass(frozen=True)
class Started:
    """The result of `start_attempt`: outcome is started, terminal or not_found."""

    outcome: str
    job: Job | None
    user_id: str | None
    input: dict[str, Any] | None


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

    def prepare_submit(
        self, user_id: str, cost: int, tier: str, idempotency_key: str | None, request_hash: str
    ) -> dict[str, Any]:
        """Choose a tier without charging. Returns the SQL outcome dict (see the migration)."""
        result: dict[str, Any] = self.backend.call(
            "cs_prepare_submit",
            {
                "p_user_id": user_id,
                "p_cost": cost,
                "p_tier": tier,
                "p_idempotency_key": idempotency_key,
                "p_request_hash": request_hash,
                "p_initial_coins": self.initial_coins,
                "p_free_daily": self.free_daily,
            },
        )
        return result

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
        """Insert and charge the job in one transaction. Outcome: created, existing,
        idempotency_conflict or quota_exhausted."""
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
        self.backend.call("cs_mark_enqueued", {"p_job_id": job_id})

    def abort_submit(self, job_id: str, code: str, message: str) -> bool:
        """Fail and refund a job the broker never accepted; True if this call did it."""
        result = self.backend.call(
            "cs_abort_submit", {"p_job_id": job_id, "p_error": {"code": code, "message": message}}
        )
        return bool(result and result.get("outcome") == "aborted")

    def start_attempt(self, job_id: str) -> Started:
        """Begin a delivery attempt: running, attempts + 1, unless the job is terminal."""
        r = self.backend.call("cs_start_attempt", {"p_job_id": job_id})
        return Started(r["outcome"], _job(r.get("job")), r.get("user_id"), r.get("input"))

    def record_delivered(self, job_id: str, attempt: int, chars: int, typical_chars: int) -> str:
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
        return str(r["outcome"])

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

    def refund(self, job_id: str) -> bool:
        """Apply the refund rule to a failed or cancelled job at most once; True if this call
        gave coins (or the free daily use) back."""
        r = self.backend.call(
            "cs_refund", {"p_job_id": job_id, "p_max_pct": self.refund_max_delivered_pct}
        )
        return bool(r["refunded"])

    def cancel(self, job_id: str, user_id: str) -> tuple[str, Job | None]:
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
        return r["outcome"], _job(r.get("job"))

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
