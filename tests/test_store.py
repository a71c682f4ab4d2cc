"""The store contract: every SQL function, through both adapters (psycopg and supabase-py).

The `store` fixture (each adapter in turn) is fixtures/contract_suites.py's. Refunds of delivered
output are test_store_refunds.py.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from fixtures import contract_suites
from helpers.backends import INPUT, balance, new_id, refund, submit

from lib.store import Store

store = contract_suites.store  # each adapter in turn


def test_a_new_user_is_granted_the_initial_coins_once(store: Store, database_url: str) -> None:
    user = new_id()
    assert store.me(user).coins == 5
    assert store.me(user).coins == 5
    assert balance(database_url, user) == (5, 5)


def submit_job(
    store: Store, user: str, *, tier: str = "auto", cost: int = 2, key: str | None = None
) -> dict[str, Any]:
    return store.submit_job(
        job_id=new_id(),
        user_id=user,
        kind="job_match",
        tier=tier,
        cost=cost,
        input=INPUT,
        idempotency_key=key,
        request_hash="h",
    )


def test_auto_picks_paid_when_coins_cover_the_cost_then_free_then_quota(
    store: Store, database_url: str
) -> None:
    user = new_id()
    paid = submit_job(store, user, cost=5)
    assert paid["outcome"] == "created" and paid["job"]["tier"] == "paid"
    assert paid["job"]["cost"] == 5
    assert [submit_job(store, user, cost=5)["job"]["tier"] for _ in range(2)] == ["free", "free"]
    refused = submit_job(store, user, cost=5)
    assert refused == {"outcome": "quota_exhausted", "coins": 0, "free_jobs_left_today": 0}
    assert balance(database_url, user) == (0, 0)


def test_an_explicit_tier_is_never_downgraded_or_upgraded(store: Store, database_url: str) -> None:
    user = new_id()
    assert submit_job(store, user, tier="paid", cost=6)["outcome"] == "quota_exhausted"
    assert submit_job(store, user, tier="free", cost=1)["job"]["tier"] == "free"
    assert store.me(user).free_jobs_left_today == 1
    assert balance(database_url, user) == (5, 5)


def test_a_submitted_job_counts_as_enqueued_and_is_never_swept(store: Store) -> None:
    user = new_id()
    job = submit_job(store, user, key="k-enq")["job"]
    assert job["id"] not in store.sweep_unenqueued(0)
    assert store.get_job(job["id"], user).status == "queued"  # type: ignore[union-attr]
    replay = submit_job(store, user, key="k-enq")
    assert replay["outcome"] == "existing" and replay["enqueued"] is True


def test_withdraw_refunds_and_removes_the_job_and_frees_its_key(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job = submit_job(store, user, key="k-w")["job"]
    assert store.withdraw_submit(job["id"])
    assert not store.withdraw_submit(job["id"])
    assert store.get_job(job["id"], user) is None
    assert balance(database_url, user) == (5, 5)
    assert submit_job(store, user, key="k-w")["outcome"] == "created"


def test_a_free_jobs_withdrawal_gives_back_the_daily_use(store: Store) -> None:
    user = new_id()
    job = submit_job(store, user, tier="free")["job"]
    assert store.me(user).free_jobs_left_today == 1
    assert store.withdraw_submit(job["id"])
    assert store.me(user).free_jobs_left_today == 2


def test_a_started_job_is_never_withdrawn_or_aborted(store: Store, database_url: str) -> None:
    user = new_id()
    job = submit_job(store, user)["job"]
    store.start_attempt(job["id"])
    assert not store.withdraw_submit(job["id"])
    assert not store.abort_submit(job["id"], "unavailable", "x")
    assert store.get_job(job["id"], user).status == "running"  # type: ignore[union-attr]
    assert balance(database_url, user) == (3, 3)


def test_submit_debits_once_and_the_ledger_matches_the_balance(
    store: Store, database_url: str
) -> None:
    user = new_id()
    created = submit(store, user, cost=2)
    assert created["outcome"] == "created"
    assert created["job"]["status"] == "queued" and created["job"]["cost"] == 2
    assert balance(database_url, user) == (3, 3)


def test_paid_submit_without_coins_is_refused_and_charges_nothing(
    store: Store, database_url: str
) -> None:
    user = new_id()
    assert submit(store, user, cost=6)["outcome"] == "quota_exhausted"
    assert balance(database_url, user) == (5, 5)


def test_the_same_idempotency_key_returns_the_same_job_without_a_second_charge(
    store: Store, database_url: str
) -> None:
    user = new_id()
    first = submit(store, user, key="k1", digest="a")
    again = submit(store, user, key="k1", digest="a")
    assert again["outcome"] == "existing" and again["job"]["id"] == first["job"]["id"]
    assert submit_job(store, user, key="k1")["outcome"] == "idempotency_conflict"
    assert submit(store, user, key="k1", digest="b")["outcome"] == "idempotency_conflict"
    assert balance(database_url, user) == (3, 3)


def test_concurrent_submits_with_one_key_create_one_job(
    store_backend: Any, database_url: str
) -> None:
    user = new_id()
    results: list[dict[str, Any]] = []

    def one() -> None:
        results.append(
            submit(
                Store(store_backend, initial_coins=5, free_daily=2),
                user,
                key="same",
                digest="x",
                cost=1,
            )
        )

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["outcome"] for r in results) == ["created"] + ["existing"] * 5
    assert len({r["job"]["id"] for r in results}) == 1
    assert balance(database_url, user) == (4, 4)


def test_start_attempt_counts_attempts_and_refuses_terminal_jobs(store: Store) -> None:
    job = submit(store, new_id())["job"]
    first = store.start_attempt(job["id"])
    assert first.outcome == "started" and first.job and first.job.attempts == 1
    assert first.input == INPUT
    assert store.start_attempt(job["id"]).job.attempts == 2  # type: ignore[union-attr]
    store.finish(job["id"], "succeeded", result={"ok": True})
    assert store.start_attempt(job["id"]).outcome == "terminal"
    assert store.start_attempt(new_id()).outcome == "not_found"


def test_finish_happens_once_and_a_late_duplicate_cannot_overwrite_it(store: Store) -> None:
    job = submit(store, new_id())["job"]
    store.start_attempt(job["id"])
    first = store.finish(job["id"], "succeeded", result={"score": 1})
    late = store.finish(job["id"], "failed", error={"code": "x", "message": "late"})
    assert first.changed and not late.changed
    assert late.job and late.job.status == "succeeded" and late.job.result == {"score": 1}


def test_failure_refunds_exactly_once(store: Store, database_url: str) -> None:
    user = new_id()
    job = submit(store, user, cost=2)["job"]
    store.finish(job["id"], "failed", error={"code": "x", "message": "m"})
    assert not refund(store, job["id"])
    store.finish(job["id"], "failed", error={"code": "x", "message": "m"})
    assert balance(database_url, user) == (5, 5)


def test_a_free_jobs_failure_gives_back_the_daily_use(store: Store) -> None:
    user = new_id()
    job = submit(store, user, tier="free")["job"]
    assert store.me(user).free_jobs_left_today == 1
    store.finish(job["id"], "failed", error={"code": "x", "message": "m"})
    assert store.me(user).free_jobs_left_today == 2


def test_cancel_refunds_and_only_the_owner_may_cancel(store: Store, database_url: str) -> None:
    user = new_id()
    job = submit(store, user, cost=2)["job"]
    assert store.cancel(job["id"], new_id())[0] == "not_found"
    outcome, cancelled = store.cancel(job["id"], user)
    assert outcome == "cancelled" and cancelled and cancelled.status == "cancelled"
    assert store.cancel(job["id"], user)[0] == "already_finished"
    assert balance(database_url, user) == (5, 5)


def test_get_and_list_show_only_the_owners_jobs_newest_first(store: Store) -> None:
    user = new_id()
    ids = [submit(store, user, cost=1)["job"]["id"] for _ in range(3)]
    assert store.get_job(ids[0], new_id()) is None
    assert store.get_job(ids[0], user).id == ids[0]  # type: ignore[union-attr]
    listed = [j.id for j in store.list_jobs(user, 2)]
    assert listed == ids[::-1][:2]
    assert [j.id for j in store.list_jobs(user, 2, before=listed[-1])] == [ids[0]]
    assert store.list_jobs(new_id(), 10) == []


def test_abort_submit_fails_refunds_and_frees_the_key(store: Store, database_url: str) -> None:
    user = new_id()
    job = submit_job(store, user, key="k")["job"]
    assert store.abort_submit(job["id"], "unavailable", "broker down")
    assert not store.abort_submit(job["id"], "unavailable", "broker down")
    assert store.get_job(job["id"], user).status == "failed"  # type: ignore[union-attr]
    assert balance(database_url, user) == (5, 5)
    assert submit_job(store, user, key="k")["outcome"] == "created"


def test_a_job_marked_enqueued_is_never_swept(store: Store) -> None:
    job = submit(store, new_id())["job"]
    store.mark_enqueued(job["id"])
    assert job["id"] not in store.sweep_unenqueued(0)


def test_the_sweeper_fails_and_refunds_jobs_that_were_never_enqueued(
    store: Store, database_url: str
) -> None:
    user = new_id()
    job = submit(store, user, cost=2)["job"]
    assert job["id"] in store.sweep_unenqueued(0)
    assert store.get_job(job["id"], user).status == "failed"  # type: ignore[union-attr]
    assert balance(database_url, user) == (5, 5)


def test_the_ledger_is_append_only(database_url: str, store: Store) -> None:
    user = new_id()
    store.me(user)
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.Error):
        conn.execute("update cs_ledger set amount = 100 where user_id = %s", (user,))


def test_row_level_security_shows_a_user_only_their_own_jobs(
    store: Store, database_url: str
) -> None:
    alice, bob = new_id(), new_id()
    submit(store, alice, cost=1)
    submit(store, bob, cost=1)
    with psycopg.connect(database_url) as conn:
        conn.execute("set role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, false)",
            (f'{{"sub": "{alice}", "role": "authenticated"}}',),
        )
        owners = {row[0] for row in conn.execute("select user_id::text from cs_jobs")}
        with pytest.raises(psycopg.Error):
            conn.execute("select cs_cancel(gen_random_uuid(), %s::uuid)", (alice,))
    assert owners == {alice}
