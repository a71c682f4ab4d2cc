"""Our store through a transaction pooler (Supabase's port 6543; here a real PgBouncer 1.18 in
transaction mode, one server connection shared by every client): what works and what breaks.

- psycopg's own default, server-side prepared statements after 5 runs of a query, breaks: the
  name is already taken (or missing) on the server connection the next transaction gets.
- `PostgresBackend` prepares nothing, so the store works, many threads at once.
- A session advisory lock (`pg_advisory_lock`) stays on the server connection, so it does not
  exclude another client: `lib/store/migrate.py` takes one, so migrations need a direct or
  session-pooled connection. Our SQL functions take transaction locks only
  (`pg_advisory_xact_lock`), which hold.
- LISTEN/NOTIFY: the store uses neither; not tested.
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from lib.store import Store
from lib.store.backends import PostgresBackend


def _store(url: str) -> Store:
    return Store(PostgresBackend(url, max_size=4, timeout=10), initial_coins=100, free_daily=3)


def test_psycopgs_default_prepared_statements_break_behind_a_transaction_pooler(
    pgbouncer_url: str,
) -> None:
    first = psycopg.connect(pgbouncer_url, autocommit=True)
    second = psycopg.connect(pgbouncer_url, autocommit=True)
    try:
        for _ in range(8):  # prepared as "_pg3_0" on the shared server connection
            first.execute("select %s::int + 1", (1,))
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            for _ in range(8):
                second.execute("select %s::int + 1", (1,))
    finally:
        first.close()
        second.close()


def test_the_store_works_behind_a_transaction_pooler_from_many_threads(pgbouncer_url: str) -> None:
    store = _store(pgbouncer_url)
    errors: list[str] = []
    created: list[str] = []

    def submit_many() -> None:
        for _ in range(8):
            user = str(uuid.uuid4())
            try:
                result = store.submit_job(
                    job_id=str(uuid.uuid4()),
                    user_id=user,
                    kind="job_match",
                    tier="auto",
                    cost=1,
                    input={"resume_text": "Python.", "job_description": "Backend."},
                    idempotency_key="same-key",
                    request_hash="h",
                )
                created.append(result["outcome"])
                assert store.me(user).coins == 99  # charged once
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=submit_many) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        store.close()

    assert errors == []
    assert created == ["created"] * 48


def test_a_session_advisory_lock_excludes_no_one_behind_a_transaction_pooler(
    pgbouncer_url: str,
) -> None:
    holder = psycopg.connect(pgbouncer_url, autocommit=True)
    other = psycopg.connect(pgbouncer_url, autocommit=True)
    key = 7_310_042
    try:
        holder.execute("select pg_advisory_lock(%s)", (key,))
        taken = other.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()

        assert taken == (True,)  # on a direct connection this would be False
    finally:
        for conn in (other, holder):
            conn.execute("select pg_advisory_unlock_all()")
            conn.close()
