"""The reconciler (lib/reconcile.py) on the real Redis and Postgres, with the dev broker and a
real worker behind it: each heal ends the job terminal with nobody's help.

A worker attempt that died is arranged the way it leaves the database: the job `running`, its
attempt counted, no lease in Redis, and `updated_at` older than LEASE_TTL_SECONDS (set back in
the database rather than waited for). A lost message is the dev broker's drop-publishes switch.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import requests
from flask import Flask
from helpers import images
from helpers.net import free_port, serve_wsgi, wait_for
from helpers.storage import upload_direct
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from lib.queue.producer import QStashPublisher
from lib.queue.signing import DEV_TOKEN
from lib.reconcile import Reconciler, Summary
from scripts.fakes.dev_broker import create_app as create_broker

if TYPE_CHECKING:
    from helpers.worker import Created, Db, WorkerEnv


RETRIES = 2


@dataclass
class Healing:
    env: WorkerEnv
    broker_url: str
    broker: Flask
    db: Db

    def reconciler(self, **overrides: Any) -> Reconciler:
        settings = self.env.settings.model_copy(update=overrides)
        return Reconciler(settings, self.env.store, self.env.state, QStashPublisher(settings))

    def run(self, **overrides: Any) -> Summary:
        return self.reconciler(**overrides).run()

    def drop_publishes(self, count: int) -> None:
        requests.post(
            f"{self.broker_url}/v2/_dev/drop-publishes",
            json={"count": count},
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
            timeout=5,
        ).raise_for_status()

    def stale(self, job_id: str) -> None:
        """Make the job look untouched for an hour (its attempt died long ago)."""
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute(
                "update cs_jobs set updated_at = now() - interval '1 hour' where id = %s",
                (job_id,),
            )

    def died_running(self, attempts: int = 1) -> Created:
        """A job whose last of `attempts` attempts died: running, no lease, stale."""
        job = self.env.create_job()
        self.env.store.mark_enqueued(job.job_id)
        for _ in range(attempts):
            self.env.store.start_attempt(job.job_id)
        self.stale(job.job_id)
        return job


@pytest.fixture
def healing(make_worker: Callable[..., WorkerEnv], db: Db) -> Iterator[Healing]:
    """A worker and a dev broker on one loopback server, the broker delivering to the worker."""
    dispatcher = DispatcherMiddleware(NotFound(), {})
    broker = create_broker(time_scale=0.001)
    with serve_wsgi(dispatcher) as url:
        dispatcher.mounts["/qstash"] = broker
        env = make_worker(
            worker_url=f"{url}/worker", qstash_url=f"{url}/qstash", job_retries=RETRIES
        )
        dispatcher.mounts["/worker"] = env.app
        try:
            yield Healing(env, f"{url}/qstash", broker, db)
        finally:
            broker.broker.stop()  # type: ignore[attr-defined]


def terminal(db: Db, job_id: str) -> str | None:
    status = db.job(job_id)["status"]
    return status if status in ("succeeded", "failed", "cancelled") else None


def test_a_running_job_whose_lease_expired_is_republished_and_succeeds(healing: Healing) -> None:
    job = healing.died_running()

    assert healing.run().republished >= 1
    assert wait_for(lambda: terminal(healing.db, job.job_id)) == "succeeded"
    assert healing.db.job(job.job_id)["attempts"] == 2


def test_a_lost_message_is_republished_and_the_job_succeeds(healing: Healing) -> None:
    job = healing.env.create_job()
    healing.drop_publishes(1)
    QStashPublisher(healing.env.settings).publish(
        job.job_id, user_id=job.user_id, tier=job.tier, model="openai:offline"
    )
    healing.env.store.mark_enqueued(job.job_id)
    healing.run()
    assert healing.db.job(job.job_id)["status"] == "queued"  # not stale yet: on its way
    healing.stale(job.job_id)

    assert healing.run().republished >= 1
    assert wait_for(lambda: terminal(healing.db, job.job_id)) == "succeeded"


def test_a_job_that_is_never_delivered_is_failed_and_refunded_after_max_heals(
    healing: Healing,
) -> None:
    job = healing.env.create_job()
    coins = healing.db.coins(job.user_id)
    healing.env.store.mark_enqueued(job.job_id)
    healing.drop_publishes(10)
    healing.stale(job.job_id)
    healing.run(reconcile_max_heals=1)
    assert healing.db.one("select heals from cs_jobs where id = %s", job.job_id) == 1
    healing.stale(job.job_id)

    summary = healing.run(reconcile_max_heals=1)

    assert summary.failed >= 1 and summary.refunded >= 1
    assert terminal(healing.db, job.job_id) == "failed"
    assert healing.db.coins(job.user_id) == (coins or 0) + job.cost
    assert healing.db.ledger(job.job_id) == [("debit", -job.cost), ("refund", job.cost)]


def test_a_job_past_its_budget_is_failed_and_refunded_once_by_two_concurrent_runs(
    healing: Healing,
) -> None:
    job = healing.died_running(attempts=RETRIES + 1)
    coins = healing.db.coins(job.user_id)
    start = threading.Barrier(2)
    summaries: list[Summary] = []

    def run() -> None:
        reconciler = healing.reconciler()
        start.wait()
        summaries.append(reconciler.run())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    # The counts are over every stuck job in the database; this job's fate is read from it.
    assert sum(s.failed for s in summaries) >= 1
    assert healing.db.job(job.job_id)["status"] == "failed"
    assert healing.db.job(job.job_id)["error"]["code"] == "retries_exhausted"
    assert [r for r in healing.db.ledger(job.job_id) if r[0] == "refund"] == [("refund", job.cost)]
    assert healing.db.coins(job.user_id) == (coins or 0) + job.cost
    closing = [e for e in healing.env.stream(job.job_id) if e.type == "status"][-1]
    assert closing.data["status"] == "failed"


def test_a_stale_running_job_that_still_holds_its_lease_is_left_alone(healing: Healing) -> None:
    job = healing.died_running()
    acquired, _ = healing.env.state.acquire(job.job_id, job.tier, job.user_id, uuid.uuid4().hex)
    assert acquired == "acquired"

    healing.run()

    assert healing.db.job(job.job_id)["status"] == "running"
    assert healing.db.one("select heals from cs_jobs where id = %s", job.job_id) == 0


def test_admission_slots_of_finished_jobs_and_past_deadlines_are_freed(healing: Healing) -> None:
    env = healing.env
    job = env.create_job()
    env.store.finish(job.job_id, "succeeded", result={"ok": True})  # its release was lost
    tier_set, user_set = env.state.keys.tier(job.tier), env.state.keys.user(job.user_id, job.tier)
    live = env.create_job(user_id=str(uuid.uuid4()))
    env.state.backend.command("ZADD", tier_set, 1, "expired-member")

    summary = healing.run()

    assert summary.admissions_freed >= 1 and summary.admissions_expired >= 1
    assert env.state.backend.command("ZSCORE", tier_set, job.job_id) is None
    assert env.state.backend.command("ZSCORE", user_set, job.job_id) is None
    assert env.state.backend.command("ZSCORE", tier_set, "expired-member") is None
    assert env.state.backend.command("ZSCORE", tier_set, live.job_id) is not None
    # Its worker died after the row's end, before the stream's: the stream is closed too.
    events = env.stream(job.job_id)
    assert [(e.type, e.data.get("status")) for e in events[-2:]] == [
        ("result", None),
        ("status", "succeeded"),
    ]
    assert events[-2].data["result"] == {"ok": True}


def test_each_reconcile_sql_function_answers_alike_through_both_store_adapters(
    store_backend: Any, healing: Healing
) -> None:
    job = healing.died_running(attempts=RETRIES + 1)
    done = healing.env.create_job()
    healing.env.store.finish(done.job_id, "succeeded", result={"ok": True})

    candidates = store_backend.call(
        "cs_reconcile_candidates",
        {
            "p_running_seconds": 60,
            "p_queued_seconds": 60,
            "p_limit": 1000,
            "p_after_at": None,
            "p_after_id": None,
        },
    )
    terminal_ids = store_backend.call(
        "cs_reconcile_terminal", {"p_ids": [job.job_id, done.job_id, "not-a-uuid"]}
    )
    failed = store_backend.call(
        "cs_reconcile_fail",
        {
            "p_job_id": job.job_id,
            "p_status": "running",
            "p_attempts": RETRIES + 1,
            "p_older_than_seconds": 60,
            "p_error": {"code": "retries_exhausted", "message": "m"},
            "p_max_pct": 25,
        },
    )
    claimed = store_backend.call(
        "cs_reconcile_claim",
        {"p_job_id": job.job_id, "p_status": "running", "p_attempts": 1, "p_older_than_seconds": 1},
    )

    assert job.job_id in [c["id"] for c in candidates]
    assert [t["id"] for t in terminal_ids] == [done.job_id]
    assert failed["changed"] is True and failed["refund"] == "refund"
    assert claimed == {"claimed": False}  # it is failed now: nothing to re-publish


def test_nothing_is_republished_while_the_worker_is_not_ready(healing: Healing) -> None:
    job = healing.died_running()

    summary = healing.reconciler(worker_url=f"http://127.0.0.1:{free_port()}").run()

    assert summary.deferred >= 1 and summary.republished == 0
    assert healing.db.one("select heals from cs_jobs where id = %s", job.job_id) == 0
    assert healing.run().republished >= 1  # the worker answers /readyz: now it is
    assert wait_for(lambda: terminal(healing.db, job.job_id)) == "succeeded"


def test_live_attempts_filling_a_batch_do_not_hide_a_dead_one_behind_them(
    healing: Healing,
) -> None:
    env = healing.env
    live = [healing.died_running() for _ in range(3)]
    dead = healing.died_running()
    # Older than any other test's leftovers: these four are the first candidates, in order.
    with psycopg.connect(healing.db.url, autocommit=True) as conn:
        for i, job in enumerate([*live, dead]):
            conn.execute(
                "update cs_jobs set updated_at = timestamptz '2000-01-01' + %s * interval '1 s'"
                " where id = %s",
                (i, job.job_id),
            )
    for job in live:
        env.state.backend.command("SET", env.state.keys.lease(job.job_id), "held", "PX", 60_000)

    healing.run(reconcile_batch=2)

    assert healing.db.one("select heals from cs_jobs where id = %s", dead.job_id) == 1
    assert [healing.db.one("select heals from cs_jobs where id = %s", j.job_id) for j in live] == [
        0,
        0,
        0,
    ]


def test_a_dead_boxs_job_is_republished_to_the_live_box_not_the_dead_one(
    healing: Healing,
) -> None:
    from lib.boxes import Registry

    live = healing.env.settings.worker_url  # the worker serving behind the broker
    dead = f"http://127.0.0.1:{free_port()}"  # listed first: the fallback when nothing is live
    Registry(healing.env.state).beat(live, "p1", 0, 10)
    job = healing.died_running()

    summary = healing.run(worker_urls=[dead, live])

    # (Other tests' stale jobs in the shared database may be healed too: at least ours.)
    assert summary.republished >= 1 and summary.deferred == 0
    assert wait_for(lambda: terminal(healing.db, job.job_id)) == "succeeded"
    # With no live announcement, the first listed box is asked, found down, and nothing moves.
    healing.env.state.backend.command("DEL", healing.env.state.keys.boxes())
    other = healing.died_running()
    summary = healing.run(worker_urls=[dead, live])
    assert summary.republished == 0 and summary.deferred >= 1
    assert healing.db.job(other.job_id)["status"] == "running"


def test_a_pipeline_whose_next_step_was_lost_is_republished_at_that_step(
    healing: Healing, storage_url: str
) -> None:
    user, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    path = upload_direct(storage_url, user, images.png())
    store = healing.env.store
    store.submit(
        job_id=job_id,
        user_id=user,
        kind="match_from_image",
        tier="paid",
        cost=4,
        input={"image": {"path": path}, "resume_text": "Python, Redis.", "language": "en"},
        idempotency_key=None,
        request_hash=job_id,
    )
    healing.env.state.admit(job_id, "paid", user)
    QStashPublisher(healing.env.settings).publish(
        job_id, user_id=user, tier="paid", model="openai:offline"
    )
    store.mark_enqueued(job_id)
    healing.drop_publishes(1)  # the worker's publish of step 2
    wait_for(lambda: healing.db.one("select step from cs_jobs where id = %s", job_id) == 1)
    healing.stale(job_id)

    assert healing.run().republished >= 1
    assert wait_for(lambda: terminal(healing.db, job_id), timeout=30) == "succeeded"
    steps = [e.data["step"] for e in healing.env.stream(job_id) if e.type == "step"]
    assert steps == [0, 1, 2, 3]  # step 1 never ran again


def test_a_pipelines_retry_budget_counts_the_running_steps_attempts_only(
    healing: Healing,
) -> None:
    job = healing.died_running(attempts=RETRIES + 2)  # more than the budget, across steps
    with psycopg.connect(healing.db.url, autocommit=True) as conn:  # 2 of them earlier steps'
        conn.execute(
            "update cs_jobs set step = 2, step_attempts_base = 2 where id = %s", (job.job_id,)
        )
    healing.drop_publishes(5)

    summary = healing.run()

    assert summary.republished >= 1 and summary.failed == 0
    assert healing.db.job(job.job_id)["status"] == "running"


def test_a_job_waiting_for_its_model_in_detached_mode_is_left_alone(healing: Healing) -> None:
    job = healing.died_running()
    model = healing.env.settings.model_for(job.tier, "job_match")
    taken = healing.env.state.take_slot(
        "holder", job.tier, model, limit=1, generation=None, wait_seconds=60
    )
    waiting = healing.env.state.take_slot(
        job.job_id, job.tier, model, limit=1, generation=None, wait_seconds=60
    )
    assert (taken.outcome, waiting.outcome) == ("ok", "wait")

    healing.run()

    # Other tests' stale jobs share the database: this one's row says what was done to it.
    assert healing.db.one("select heals from cs_jobs where id = %s", job.job_id) == 0
    assert healing.db.job(job.job_id)["status"] == "running"
