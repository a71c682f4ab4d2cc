"""Detached execution end to end (lib/detached.py): a worker served on loopback in
EXECUTION_MODE=detached, a dev broker delivering to it, real Redis, Postgres and the offline LLM.

The broker runs at time_scale 0.01 unless a test says otherwise, so QStash's backoff (12 s,
2 min 28 s, ...) and the worker's delayed re-publishes take a hundredth of their time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from helpers.net import wait_for
from helpers.worker import assert_untouched, deliver, failure_callback, statuses

from lib.reconcile import Reconciler

if TYPE_CHECKING:
    from helpers.detached import DetachedEnv
    from helpers.worker import Created, Db

SLOW = "[[llm:slow=6]]"


def _status(db: Db, job: Created) -> str:
    return str(db.job(job.job_id)["status"])


def _terminal(db: Db, job: Created, timeout: float = 30.0) -> dict[str, object]:
    wait_for(
        lambda: _status(db, job) in ("succeeded", "failed", "cancelled"),
        timeout,
        what=f"job {job.job_id} terminal",
    )
    return db.job(job.job_id)


def test_a_delivery_is_answered_once_the_job_started_and_the_job_then_succeeds(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job(SLOW)

    d.submit(job)

    # The broker saw its delivery answered (200) while the job still runs in the background.
    wait_for(lambda: d.stats()["delivered"] == 1, what="the delivery answered")
    assert _status(db, job) == "running"
    assert d.env.lease_held(job.job_id)
    row = _terminal(db, job)
    assert row["status"] == "succeeded" and row["attempts"] == 1
    assert statuses(d.env.stream(job.job_id)) == [("running", 1), ("succeeded", 1)]
    assert db.ledger(job.job_id) == [("debit", -1)]
    # One QStash message for a job that never waited: no watchdog, no extra publish.
    stats = d.stats()
    assert stats["published"] == 1 and stats["deliveries"] == 1
    wait_for(lambda: d.detached.active() == 0, what="the background job settled")
    assert not d.env.lease_held(job.job_id)
    assert d.env.state.live("paid") == 0


def test_a_retryable_failure_is_re_published_and_keeps_the_attempt_count(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job("[[llm:fail_once=503]]")

    d.submit(job)

    row = _terminal(db, job)
    assert row["status"] == "succeeded" and row["attempts"] == 2
    events = d.env.stream(job.job_id)
    assert statuses(events) == [("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 2)]
    assert db.ledger(job.job_id) == [("debit", -1)]
    stats = d.stats()
    assert stats["published"] == 2 and stats["retried"] == 0  # a re-publish, not a QStash retry


def test_past_its_retries_a_job_fails_and_is_refunded_once(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached(job_retries=2)
    job = d.env.create_job("[[llm:fail=503]]")

    d.submit(job)

    row = _terminal(db, job)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    wait_for(lambda: d.detached.active() == 0, what="the background job settled")
    assert d.stats()["published"] == 3
    assert [s for s, _ in statuses(d.env.stream(job.job_id))].count("failed") == 1
    assert d.env.state.live("paid") == 0


def test_a_running_job_whose_worker_died_is_healed_by_the_reconciler(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job()
    # What a worker SIGKILLed after its 200 leaves: the job running, no lease, no message.
    assert d.env.store.start_attempt(job.job_id).job is not None
    reconciler = Reconciler(d.env.settings, d.env.store, d.env.state, d.publisher, lambda box: True)

    def healed() -> bool:
        # The database is shared: a job an earlier test left running may be re-published too,
        # so the count says nothing of this one; its row does.
        reconciler.run()
        return _status(db, job) in ("succeeded", "failed")

    wait_for(healed, 30, 0.2, "the reconciler to heal the job")

    row = _terminal(db, job)
    assert row["status"] == "succeeded" and row["attempts"] == 2
    assert db.ledger(job.job_id) == [("debit", -1)]


def test_duplicate_and_concurrent_deliveries_never_run_a_job_twice(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job(SLOW)
    # The producer's message and a reconciler's heal of the same job, at once.
    threads = [
        threading.Thread(target=d.submit, args=(job,), kwargs={"dedup_id": f"{job.job_id}.{i}"})
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: _status(db, job) == "running", what="the job running")

    again = deliver(d.env, job)

    # As inline: a duplicate comes back once the holder's lease may have lapsed.
    assert again.status_code == 429
    assert 1 <= int(again.headers["Retry-After"]) <= d.env.settings.lease_ttl_seconds
    row = _terminal(db, job)
    assert row["status"] == "succeeded" and row["attempts"] == 1
    assert statuses(d.env.stream(job.job_id)) == [("running", 1), ("succeeded", 1)]


def test_a_full_model_makes_jobs_wait_in_order_without_using_retries(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    # time_scale 1 and a 30 s wait: only the wake of a freed slot makes progress in time.
    d = make_detached(time_scale=1.0, llm_max_concurrency_paid=1, detached_wait_seconds=30)
    jobs = [d.env.create_job(SLOW) for _ in range(3)]
    model = d.env.settings.model_for("paid", "job_match")
    running: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running.append(sum(_status(db, j) == "running" for j in jobs))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        d.submit(jobs[0])
        wait_for(lambda: _status(db, jobs[0]) == "running", what="the first job running")
        # The last job submitted arrives first: it waits at the head, and the earlier one,
        # arriving later, joins behind it (the line is in order of arrival, so a waiter's
        # position never goes up).
        d.submit(jobs[2])
        wait_for(
            lambda: d.env.state.queue_position(jobs[2].job_id, "paid", model) == (1, 0),
            what="the last job first in line",
        )
        d.submit(jobs[1])
        wait_for(
            lambda: d.env.state.queue_position(jobs[1].job_id, "paid", model) == (2, 1),
            what="the earlier job second in line",
        )
        assert d.env.state.queue_position(jobs[2].job_id, "paid", model) == (1, 0)
        rows = [_terminal(db, j, 60) for j in jobs]
    finally:
        stop.set()
        watcher.join()

    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert [r["attempts"] for r in rows] == [1, 1, 1]  # waiting used no attempt, no retry
    started = [rows[0]["started_at"], rows[2]["started_at"], rows[1]["started_at"]]
    assert started == sorted(started)  # in order of arrival
    assert max(running) == 1
    assert d.env.state.wait_counts()[f"paid:{model}"] >= 2
    assert d.env.state.slots_held("paid", model) == 0


def test_a_full_worker_re_publishes_the_delivery_instead_of_refusing_it(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached(worker_max_jobs=1, detached_wait_seconds=20)
    first, second = d.env.create_job(SLOW), d.env.create_job(SLOW)

    d.submit(first)
    wait_for(lambda: _status(db, first) == "running", what="the first job running")
    d.submit(second)

    rows = [_terminal(db, first), _terminal(db, second)]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
    assert [r["attempts"] for r in rows] == [1, 1]
    stats = d.stats()
    assert stats["retried"] == 0 and stats["published"] >= 3


def test_on_drain_a_background_job_stops_and_is_re_published(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached(worker_drain_seconds=0.5)
    job = d.env.create_job("[[llm:slow=200]]")
    d.submit(job)
    wait_for(lambda: _status(db, job) == "running", what="the job running")

    assert d.detached.shutdown(10) is True

    events = d.env.stream(job.job_id)
    error = next(e for e in events if e.type == "error")
    assert error.data["code"] == "worker_shutting_down"
    assert statuses(events)[-1] == ("retrying", 1)
    wait_for(lambda: d.stats()["published"] == 2, what="the re-publish")
    assert not d.env.lease_held(job.job_id)
    assert db.ledger(job.job_id) == [("debit", -1)]


def test_the_failure_callback_fails_and_refunds_a_job_in_detached_mode(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job()

    response = failure_callback(d.env, job)

    assert response.status_code == 200
    assert _status(db, job) == "failed"
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]


def test_a_delivery_with_a_malformed_generation_is_refused_and_changes_nothing(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    d = make_detached()
    job = d.env.create_job()
    raw = (
        f'{{"job_id":"{job.job_id}","user_id":"{job.user_id}","tier":"paid","retries":3,"gen":"x"}}'
    ).encode()

    response = deliver(d.env, job, body=raw)

    assert response.status_code == 489
    assert_untouched(d.env, db, job)
