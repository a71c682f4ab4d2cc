"""lib/queue/producer.py against the real dev broker and the real worker over HTTP.

The producer publishes with the official SDK to the QStash-compatible dev broker, which delivers
to the worker's Flask app served on a loopback port (Redis, Postgres and the offline LLM are the
suite's real servers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import requests
from helpers.broker import AUTH
from helpers.net import free_port, serve_wsgi, wait_for

from lib.queue.plans import failure_callback_retries
from lib.queue.producer import QStashPublisher
from scripts.fakes.dev_broker import create_app

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv


@pytest.fixture
def broker_url() -> Iterator[str]:
    """The dev broker on the default plan (pay-as-you-go), its backoff shortened 1000 times."""
    app = create_app(time_scale=0.001)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.broker.stop()  # type: ignore[attr-defined]


def test_with_no_job_retries_a_deferred_failure_callback_still_fails_and_refunds_the_job_once(
    make_worker: Callable[..., WorkerEnv], db: Db, broker_url: str
) -> None:
    port = free_port()
    env = make_worker(worker_url=f"http://127.0.0.1:{port}", qstash_url=broker_url, job_retries=0)
    job = env.create_job()
    # Another attempt holds the job's lease (LEASE_TTL_SECONDS=2, never renewed): the delivery
    # is answered 429, and so is the first failure callback, which must be retried to land.
    taken, _ = env.state.acquire(job.job_id, job.tier, job.user_id, "another-attempt")
    assert taken == "acquired"

    with serve_wsgi(env.app, port=port):
        QStashPublisher(env.settings).publish(
            job.job_id, user_id=job.user_id, tier=job.tier, model="openai:offline"
        )
        wait_for(
            lambda: db.job(job.job_id)["status"] == "failed", timeout=20, what="the job to fail"
        )

    row = db.job(job.job_id)
    assert row["error"]["code"] == "retries_exhausted"
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]
    assert db.coins(job.user_id) == 5
    assert env.state.done(job.job_id) == "failed"
    assert env.state.live(job.tier) == 0
    stats = requests.get(f"{broker_url}/v2/_dev/stats", headers=AUTH, timeout=5).json()
    # The delivery failed once with no retry; its failure callback was deferred once, then landed.
    assert (stats["failed"], stats["callbacks"], stats["retried"]) == (1, 1, 1)


def test_the_failure_callback_gets_at_least_five_retries_within_the_plans_maximum() -> None:
    assert failure_callback_retries("payg", 0) == 5
    assert failure_callback_retries("payg", 3) == 5
    assert failure_callback_retries("free", 0) == 3
    assert failure_callback_retries("fixed-1m", 12) == 12
    assert failure_callback_retries("fixed-1m", 40) == 20
    assert failure_callback_retries("enterprise", 8) == 8
