"""The store contract for delivered output (docs/security.md, "Model output for free"): what a
cancel or a failure refunds once output was delivered, and what the ledger records, through both
adapters (psycopg and supabase-py). The `store` fixture is fixtures/contract_suites.py's.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fixtures import contract_suites
from helpers.backends import balance, new_id, refund, submit

from lib.store import Store

store = contract_suites.store  # each adapter in turn


def ledger(database_url: str, job_id: str) -> list[tuple[str, int, float | None]]:
    """The job's ledger rows: (reason, amount, delivered_pct), oldest first."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select reason, amount, delivered_pct from cs_ledger where job_id = %s order by id",
            (job_id,),
        ).fetchall()
    return [(r[0], r[1], None if r[2] is None else float(r[2])) for r in rows]


def running(store: Store, user: str, *, tier: str = "paid") -> str:
    """A submitted job whose first attempt has started."""
    job_id: str = submit(store, user, tier=tier)["job"]["id"]
    assert store.start_attempt(job_id).outcome == "started"
    return job_id


def test_a_cancel_after_more_than_the_threshold_was_delivered_refunds_nothing(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)
    assert store.record_delivered(job_id, 1, 300, 900) == "recorded"

    outcome, job = store.cancel(job_id, user)

    assert outcome == "cancelled" and job and job.status == "cancelled"
    assert balance(database_url, user) == (3, 3)
    assert ledger(database_url, job_id) == [("debit", -2, None), ("no_refund_delivered", 0, 33.33)]


def test_a_cancel_with_exactly_the_threshold_delivered_still_refunds_in_full(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)
    assert store.record_delivered(job_id, 1, 225, 900) == "recorded"  # 25 %, not more

    store.cancel(job_id, user)

    assert balance(database_url, user) == (5, 5)
    assert ledger(database_url, job_id) == [("debit", -2, None), ("refund", 2, 25.0)]


def test_a_cancel_while_queued_refunds_in_full_and_the_ledger_says_nothing_was_delivered(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = submit(store, user)["job"]["id"]

    assert store.cancel(job_id, user)[0] == "cancelled"

    assert balance(database_url, user) == (5, 5)
    assert ledger(database_url, job_id) == [("debit", -2, None), ("refund", 2, 0.0)]


def test_a_failure_takes_in_the_workers_final_count_before_it_decides(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)

    finished = store.finish(
        job_id,
        "failed",
        error={"code": "invalid_model_output", "message": "m"},
        delivered_chars=450,
        typical_chars=900,
    )

    assert finished.changed and finished.refund == "no_refund_delivered"
    assert balance(database_url, user) == (3, 3)
    assert ledger(database_url, job_id)[-1] == ("no_refund_delivered", 0, 50.0)
    assert not refund(store, job_id)


def test_a_failure_before_any_output_was_delivered_refunds_in_full(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)

    finished = store.finish(
        job_id, "failed", error={"code": "x", "message": "m"}, delivered_chars=0, typical_chars=900
    )

    assert finished.refund == "refund"
    assert balance(database_url, user) == (5, 5)
    assert ledger(database_url, job_id)[-1] == ("refund", 2, 0.0)


def test_a_free_jobs_delivered_output_keeps_the_daily_use_spent(
    store: Store, database_url: str
) -> None:
    user = new_id()
    kept, refunded = running(store, user, tier="free"), running(store, user, tier="free")
    assert store.me(user).free_jobs_left_today == 0
    store.record_delivered(kept, 1, 901, 900)

    store.cancel(kept, user)
    store.finish(refunded, "failed", error={"code": "x", "message": "m"})

    assert store.me(user).free_jobs_left_today == 1  # only the undelivered one came back
    assert ledger(database_url, kept) == [("no_refund_delivered", 0, 100.11)]
    assert ledger(database_url, refunded) == [("refund", 0, 0.0)]


def test_only_the_running_attempt_records_delivered_output_and_the_count_only_grows(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)
    assert store.record_delivered(job_id, 2, 800, 900) == "stale"  # not this job's attempt
    assert store.record_delivered(job_id, 1, 300, 900) == "recorded"
    assert store.record_delivered(job_id, 1, 100, 900) == "recorded"
    assert store.start_attempt(job_id).outcome == "started"  # a retry, as attempt 2
    assert store.record_delivered(job_id, 1, 800, 900) == "stale"
    assert store.record_delivered(new_id(), 1, 1, 900) == "not_found"

    store.cancel(job_id, user)

    assert store.record_delivered(job_id, 2, 800, 900) == "terminal"
    assert ledger(database_url, job_id)[-1] == ("no_refund_delivered", 0, 33.33)


def test_the_refund_rule_is_applied_once_even_when_a_later_call_has_another_threshold(
    store_backend: Any, store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)
    store.record_delivered(job_id, 1, 180, 900)  # 20 %
    store.finish(job_id, "failed", error={"code": "x", "message": "m"})
    stricter = Store(store_backend, initial_coins=5, free_daily=2, refund_max_delivered_pct=10)

    assert not refund(stricter, job_id)
    assert stricter.finish(job_id, "failed", error={"code": "x", "message": "m"}).refund is None

    assert balance(database_url, user) == (5, 5)
    assert ledger(database_url, job_id) == [("debit", -2, None), ("refund", 2, 20.0)]


def test_the_ledger_refuses_a_second_refund_decision_for_one_job(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job_id = running(store, user)
    store.cancel(job_id, user)
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "insert into cs_ledger (user_id, job_id, reason, amount)"
            " values (%s, %s, 'no_refund_delivered', 0)",
            (user, job_id),
        )


def test_a_cancelled_job_keeps_its_partial_output_once_and_only_for_its_last_attempt(
    store: Store,
) -> None:
    user = new_id()
    job_id = running(store, user)
    assert store.keep_partial(job_id, 1, "too early") == "unchanged"  # still running
    store.cancel(job_id, user)
    assert store.keep_partial(job_id, 2, "another attempt") == "unchanged"
    assert store.keep_partial(job_id, 1, '{"score": 7') == "kept"
    assert store.keep_partial(job_id, 1, "again") == "unchanged"
    job = store.get_job(job_id, user)
    assert job is not None and job.status == "cancelled"
    assert job.result == {"partial": '{"score": 7'}
