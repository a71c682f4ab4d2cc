"""Property test: the refund rule on a real Postgres, for any delivered amounts, threshold, tier
and way of ending, replayed endings included (docs/security.md, "Model output for free")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from helpers.backends import refund
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.store import Store
from lib.store.backends import PostgresBackend

ENDINGS = ["cancel", "fail", "worker_cancel"]


@pytest.fixture(scope="module")
def backend(database_url: str) -> Iterator[PostgresBackend]:
    pool = PostgresBackend(database_url, max_size=2)
    yield pool
    pool.close()


def rows(database_url: str, user: str) -> tuple[int, int, int, list[str]]:
    """(coins, sum of the ledger, free jobs used today, the refund decisions) of a user."""
    with psycopg.connect(database_url) as conn:
        coins = conn.execute("select coins from cs_balances where user_id = %s", (user,)).fetchone()
        total = conn.execute(
            "select coalesce(sum(amount), 0) from cs_ledger where user_id = %s", (user,)
        ).fetchone()
        used = conn.execute(
            "select coalesce(sum(used), 0) from cs_free_usage where user_id = %s", (user,)
        ).fetchone()
        decisions = conn.execute(
            "select reason from cs_ledger where user_id = %s"
            " and reason in ('refund', 'no_refund_delivered')",
            (user,),
        ).fetchall()
    assert coins and total and used
    return int(coins[0]), int(total[0]), int(used[0]), [str(r[0]) for r in decisions]


@settings(max_examples=60, deadline=None, database=None)
@given(
    recorded=st.lists(st.integers(0, 3000), max_size=3),
    final=st.integers(0, 3000),
    typical=st.integers(1, 3000),
    pct=st.integers(0, 100),
    tier=st.sampled_from(["paid", "free"]),
    ending=st.sampled_from(ENDINGS),
)
def test_any_delivered_amount_gets_one_refund_decision_by_the_rule(
    backend: PostgresBackend,
    database_url: str,
    recorded: list[int],
    final: int,
    typical: int,
    pct: int,
    tier: str,
    ending: str,
) -> None:
    store = Store(backend, initial_coins=5, free_daily=3, refund_max_delivered_pct=pct)
    user, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    store.submit(
        job_id=job_id,
        user_id=user,
        kind="job_match",
        tier=tier,
        cost=2,
        input={"resume_text": "r", "job_description": "d"},
        idempotency_key=None,
        request_hash="h",
    )
    store.start_attempt(job_id)
    for chars in recorded:
        assert store.record_delivered(job_id, 1, chars, typical) == "recorded"
    error = {"code": "x", "message": "m"}
    if ending == "cancel":  # the user, while the worker streams: only what was recorded counts
        store.cancel(job_id, user)
        delivered = max(recorded, default=0)
    else:  # the worker's own ending adds its final count
        status = "failed" if ending == "fail" else "cancelled"
        store.finish(job_id, status, error=error, delivered_chars=final, typical_chars=typical)
        delivered = max([*recorded, final])
    # Replays of every ending, with another threshold: nothing changes any more.
    replay = Store(backend, initial_coins=5, free_daily=3, refund_max_delivered_pct=100 - pct)
    replay.cancel(job_id, user)
    replay.finish(job_id, "failed", error=error, delivered_chars=3000, typical_chars=1)
    assert not refund(replay, job_id)
    assert store.record_delivered(job_id, 1, 3000, typical) == "terminal"

    kept = delivered * 100 > pct * typical
    coins, total, used, decisions = rows(database_url, user)
    assert decisions == ["no_refund_delivered" if kept else "refund"]
    assert coins == total
    if tier == "paid":
        assert coins == (3 if kept else 5)
    else:
        assert coins == 5 and used == (1 if kept else 0)
