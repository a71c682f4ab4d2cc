"""The worker, built in-process, and what the worker tests do to it: QStash deliveries, signed.

`WorkerEnv` is what the `make_worker` fixture (fixtures/inprocess.py) builds: real Redis and
Postgres, the offline LLM, and the worker's Flask app, driven through Flask's test client. `Db`
reads the test database straight through psycopg.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from helpers.stack import JD, RESUME, Event
from lib.config import Settings
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
from lib.queue.wire import message_body
from lib.state import State
from lib.store import Store


@dataclass
class Db:
    """Read-only views of the test database, straight through psycopg."""

    url: str

    def one(self, sql: str, *params: Any) -> Any:
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def job(self, job_id: str) -> dict[str, Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(
                "select status, attempts, result, error, enqueued_at, started_at, finished_at,"
                " tier, cost, user_id::text from cs_jobs where id = %s",
                (job_id,),
            )
            row = cur.fetchone()
            assert row is not None, f"no job {job_id}"
            names = [d.name for d in cur.description or []]
        return dict(zip(names, row, strict=True))

    def jobs_of(self, user_id: str) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select id::text, status, tier from cs_jobs where user_id = %s order by seq",
                (user_id,),
            ).fetchall()
        return [{"id": r[0], "status": r[1], "tier": r[2]} for r in rows]

    def coins(self, user_id: str) -> int | None:
        value = self.one("select coins from cs_balances where user_id = %s", user_id)
        return None if value is None else int(value)

    def ledger(self, job_id: str) -> list[tuple[str, int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select reason, amount from cs_ledger where job_id = %s order by id", (job_id,)
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def ledger_of(self, user_id: str) -> list[tuple[str, int]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "select reason, amount from cs_ledger where user_id = %s order by id", (user_id,)
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    def free_used(self, user_id: str) -> int:
        value = self.one(
            "select coalesce(sum(used), 0) from cs_free_usage where user_id = %s", user_id
        )
        return int(value)


def stream_of(st: State, job_id: str) -> list[Event]:
    """Every entry of the job's Redis stream, oldest first."""
    return [
        Event(entry_id, fields.get("t", ""), json.loads(fields.get("d", "{}")))
        for entry_id, fields in st.read(job_id, "0", 10_000)
    ]


@dataclass
class Created:
    job_id: str
    user_id: str
    tier: str
    cost: int


@dataclass
class WorkerEnv:
    """One test's worker: settings, real store/state/LLM, executor and Flask app."""

    settings: Settings
    store: Store
    state: State
    executor: Any
    app: Flask
    overrides: dict[str, Any]

    def stream(self, job_id: str) -> list[Event]:
        return stream_of(self.state, job_id)

    def lease_held(self, job_id: str) -> bool:
        return bool(self.state.backend.command("EXISTS", self.state.keys.lease(job_id)))

    def create_job(
        self,
        resume: str = RESUME,
        *,
        kind: str = "job_match",
        tier: str = "paid",
        cost: int = 1,
        user_id: str | None = None,
    ) -> Created:
        """Insert, charge and admit a job the way the producer does, without publishing."""
        job_id, user = str(uuid.uuid4()), user_id or str(uuid.uuid4())
        outcome = self.store.submit(
            job_id=job_id,
            user_id=user,
            kind=kind,
            tier=tier,
            cost=cost,
            input={"resume_text": f"{resume} ({job_id})", "job_description": JD},
            idempotency_key=None,
            request_hash=job_id,
        )
        assert outcome["outcome"] == "created", outcome
        self.state.admit(job_id, tier, user)
        return Created(job_id, user, tier, cost if tier == "paid" else 0)


def statuses(events: list[Event]) -> list[tuple[str, int]]:
    """The (status, attempt) pairs of a job's status events, in order."""
    return [(e.data["status"], e.data["attempt"]) for e in events if e.type == "status"]


def body_of(job: Created, retries: int = 3) -> bytes:
    """The QStash message body the producer publishes for `job`."""
    return message_body(job.job_id, job.user_id, job.tier, retries)


def deliver(
    env: WorkerEnv,
    job: Created,
    *,
    retried: int = 0,
    retries: int = 3,
    signature: str | None = "sign",
    body: bytes | None = None,
    app: Flask | None = None,
) -> TestResponse:
    """POST one QStash delivery of `job` to /v1/execute, signed with the current key.

    `app` is the worker app to post to (`env.app` unless given)."""
    raw = body if body is not None else body_of(job, retries)
    headers = {
        "Content-Type": "application/json",
        "Upstash-Retried": str(retried),
        "Upstash-Message-Id": f"msg_{job.job_id}",
    }
    if signature == "sign":
        signature = sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw)
    if signature is not None:
        headers["Upstash-Signature"] = signature
    return _client(env, app).post("/v1/execute", data=raw, headers=headers)


def failure_callback(
    env: WorkerEnv, job: Created, *, status: int = 500, app: Flask | None = None
) -> TestResponse:
    """POST QStash's failure callback for `job`, shaped and signed as QStash sends it."""
    raw = json.dumps(
        {
            "status": status,
            "retried": 3,
            "maxRetries": 3,
            "sourceMessageId": f"msg_{job.job_id}",
            "url": env.settings.execute_url,
            "sourceBody": base64.b64encode(body_of(job)).decode(),
        }
    ).encode()
    return _client(env, app).post(
        "/v1/failed",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.failed_url, raw),
        },
    )


def assert_untouched(env: WorkerEnv, db: Db, job: Created) -> None:
    """Assert that a refused delivery left `job` exactly as admitted: queued, charged, no events."""
    row = db.job(job.job_id)
    assert (row["status"], row["attempts"], row["started_at"]) == ("queued", 0, None)
    assert env.stream(job.job_id) == []
    assert env.state.live(job.tier) == 1
    assert env.state.done(job.job_id) is None
    assert db.ledger(job.job_id) == [("debit", -job.cost)]


def _client(env: WorkerEnv, app: Flask | None) -> FlaskClient:
    return (app or env.app).test_client()
