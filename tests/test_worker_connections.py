"""The worker's Postgres clients, across all its gunicorn processes, stay within DB_MAX_CONNECTIONS.

Supabase's session pooler refuses clients past its pool size (15 on the small plans), so the
worker (two gunicorn processes here, as in production) must never open more than its cap, however
many jobs run at once. Its connections are counted in the real Postgres's `pg_stat_activity` by
their application_name while forty jobs run through the whole local stack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import psycopg
import pytest
from helpers.net import wait_for
from helpers.stack import RESUME, User

from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

CAP = 4
JOBS = 40
COUNT = (
    "select count(*) from pg_stat_activity"
    " where datname = current_database() and application_name = 'careershaper-worker'"
)


class Peak:
    """Samples the worker's connection count in a thread until stopped; keeps the highest."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.highest = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                row = conn.execute(COUNT).fetchone()
                self.highest = max(self.highest, int(row[0]) if row else 0)


def statuses(database_url: str, job_ids: list[str]) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select status from cs_jobs where id = any(%s::uuid[])", (job_ids,)
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_two_worker_processes_under_load_never_hold_more_than_db_max_connections(
    local_stack: Callable[..., AbstractContextManager[Stack]], database_url: str
) -> None:
    with local_stack(
        "dbcap",
        WEB_CONCURRENCY="2",
        DB_MAX_CONNECTIONS=str(CAP),
        OFFLINE_LLM_TOKENS_PER_SECOND="2000",
    ) as stack:
        peak = Peak(database_url)
        peak.thread.start()
        users = [User(stack.producer_url) for _ in range(JOBS)]
        with ThreadPoolExecutor(JOBS) as pool:
            answers = list(pool.map(lambda u: u.submit(resume=RESUME + " [[llm:slow=3]]"), users))
        assert [a.status_code for a in answers] == [202] * JOBS, answers[0].text
        job_ids = [a.json()["job"]["id"] for a in answers]

        wait_for(
            lambda: statuses(database_url, job_ids) == ["succeeded"] * JOBS,
            timeout=120,
            interval=0.2,
            what="every job to succeed",
        )
        peak.stop.set()
        peak.thread.join(5)

    # Both processes connected, and together they never passed the cap.
    assert 2 <= peak.highest <= CAP
