"""Redis or the database unavailable, as production meets it, at the producer and the worker.

Upstash is the project's REST stand-in with its fault switch (scripts/fakes/upstash_faults.py): the
daily-limit error, an edge 502 in HTML, a hang past the client's timeout. The producer must
answer 503 `unavailable` having charged nothing and queued nothing; the worker must answer a
retryable 503 without `Retry-After`, so that QStash spaces its retries by its own backoff
instead of using them all up within seconds (docs/operations.md, "Outages").
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from flask import Flask
from helpers.backends import live_for_user
from helpers.net import free_port, serve_wsgi, wait_for
from helpers.worker import deliver, failure_callback
from werkzeug.test import TestResponse

from lib import state, store
from lib.auth import from_settings as verifier_from_settings
from lib.errors import UnavailableError
from lib.executor import Executor
from lib.queue.producer import QStashPublisher
from lib.queue.wire import message_body
from lib.service import Producer
from lib.state import scripts
from lib.state.rest import RestBackend
from lib.state.tcp import TcpBackend
from scripts.fakes import upstash_standin
from scripts.fakes.upstash_faults import FAULT_KINDS, Fault

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv


TOKEN = "outage-test-token"
TIMEOUT = 0.5  # the REST adapter's per-request timeout, which a hang outlasts
INPUT = {"resume_text": "Python, Redis, Postgres.", "job_description": "Backend engineer."}


@pytest.fixture
def upstash(redis_url: str) -> Iterator[tuple[Flask, str]]:
    app = upstash_standin.create_app(redis_url, TOKEN, keepalive_seconds=0.2, hang_seconds=10)
    try:
        with serve_wsgi(app) as url:
            yield app, url
    finally:
        upstash_standin.close(app)


# The producer ----------------------------------------------------------------------------------
# A submit touches Redis once: the admission script also writes the `queued` event.
STEPS = {"admit and queued event": scripts.ADMIT.sha}


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_submit_that_meets_an_upstash_fault_answers_503_and_charges_and_queues_nothing(
    base_settings: dict[str, Any],
    dev_broker: str,
    upstash: tuple[Flask, str],
    db: Db,
    kind: str,
    step: str,
) -> None:
    from lib import config

    settings = config.load("api", **{**base_settings, "qstash_url": dev_broker})
    rest = state.from_settings(settings, backend=RestBackend(upstash[1], TOKEN, timeout=TIMEOUT))
    producer = Producer(
        settings,
        store.from_settings(settings, pool_size=2),
        rest,
        QStashPublisher(settings, timeout=3.0),
        verifier_from_settings(settings),
    )
    upstash_standin.set_fault(upstash[0], Fault(kind, script=STEPS[step]))
    try:
        for tier in ("paid", "free"):
            user = str(uuid.uuid4())
            with pytest.raises(UnavailableError) as caught:
                producer.submit(user, {"kind": "job_match", "input": INPUT, "tier": tier}, None)

            assert (caught.value.status, caught.value.code) == (503, "unavailable")
            assert db.coins(user) == 5  # the initial grant, untouched
            assert db.free_used(user) == 0
            jobs = db.jobs_of(user)
            assert [j["status"] for j in jobs] == []  # withdrawn: the client never got it
            assert live_for_user(rest, user, tier) == 0
        assert upstash_standin.fault_hits(upstash[0]) >= 2
    finally:
        producer.store.close()
        rest.close()


# The worker ------------------------------------------------------------------------------------
def assert_outage_answer(response: TestResponse) -> None:
    assert response.status_code == 503, response.get_json()
    assert "Retry-After" not in response.headers
    assert response.get_json()["error"]["code"] == "unavailable"


@pytest.fixture
def rest_worker(
    make_worker: Callable[..., WorkerEnv], upstash: tuple[Flask, str]
) -> Iterator[tuple[WorkerEnv, Flask]]:
    """A healthy worker (to create jobs and check them) and the app of a worker whose Redis is
    Upstash REST through the stand-in."""
    from worker.app import create_app

    env = make_worker()
    rest = state.from_settings(
        env.settings, backend=RestBackend(upstash[1], TOKEN, timeout=TIMEOUT)
    )
    executor = Executor(env.settings, env.store, rest, env.executor.llm)
    try:
        yield env, create_app({"executor": executor, **env.overrides})
    finally:
        executor.close()
        rest.close()


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_delivery_and_a_failure_callback_that_meet_an_upstash_fault_answer_a_plain_503(
    rest_worker: tuple[WorkerEnv, Flask], upstash: tuple[Flask, str], db: Db, kind: str
) -> None:
    env, app = rest_worker
    job = env.create_job()
    upstash_standin.set_fault(upstash[0], Fault(kind))

    assert_outage_answer(deliver(env, job, app=app))
    assert_outage_answer(failure_callback(env, job, status=503, app=app))

    row = db.job(job.job_id)
    assert (row["status"], row["attempts"]) == ("queued", 0)
    assert db.ledger(job.job_id) == [("debit", -1)]
    upstash_standin.set_fault(upstash[0], None)
    assert deliver(env, job, retried=1, app=app).status_code == 200
    assert db.job(job.job_id)["status"] == "succeeded"


def test_an_upstash_fault_in_the_middle_of_an_attempt_answers_a_plain_503(
    rest_worker: tuple[WorkerEnv, Flask], upstash: tuple[Flask, str], db: Db
) -> None:
    env, app = rest_worker
    job = env.create_job("[[llm:slow=20]]")
    env.state.watch(job.job_id, "tcp")  # a viewer: deltas are written as they come
    answers: list[TestResponse] = []
    runner = threading.Thread(target=lambda: answers.append(deliver(env, job, app=app)))
    runner.start()
    wait_for(lambda: any(e.type == "delta" for e in env.stream(job.job_id)), 10, what="a delta")
    # The next write of the stream (a watched flush: a plain XADD) fails once; the attempt
    # gives up and answers retryable.
    upstash_standin.set_fault(upstash[0], Fault("limit", command="XADD", times=1))
    runner.join(20)

    assert answers and not runner.is_alive()
    assert_outage_answer(answers[0])
    assert db.job(job.job_id)["status"] == "running"
    assert db.ledger(job.job_id) == [("debit", -1)]
    assert not env.lease_held(job.job_id)
    assert deliver(env, job, retried=1, app=app).status_code == 200
    assert db.job(job.job_id)["status"] == "succeeded"


def test_a_delivery_that_finds_tcp_redis_down_answers_a_plain_503(
    make_worker: Callable[..., WorkerEnv], db: Db
) -> None:
    from worker.app import create_app

    env = make_worker()
    job = env.create_job()
    down = state.from_settings(
        env.settings, backend=TcpBackend(f"redis://127.0.0.1:{free_port()}", timeout=0.5)
    )
    executor = Executor(env.settings, env.store, down, env.executor.llm)
    try:
        app = create_app({"executor": executor, **env.overrides})
        assert_outage_answer(deliver(env, job, app=app))
        assert_outage_answer(failure_callback(env, job, status=503, app=app))
    finally:
        executor.close()
        down.close()
    assert db.job(job.job_id)["status"] == "queued"
    assert db.ledger(job.job_id) == [("debit", -1)]


def test_the_dev_broker_spaces_a_workers_outage_answers_by_qstashs_scaled_backoff(
    rest_worker: tuple[WorkerEnv, Flask], upstash: tuple[Flask, str]
) -> None:
    from qstash import QStash

    from lib.queue.signing import DEV_TOKEN
    from scripts.fakes.dev_broker import create_app as create_broker

    env, app = rest_worker
    job = env.create_job()
    arrivals: list[float] = []

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/v1/execute":
            arrivals.append(time.monotonic())
        return app(environ, start_response)

    scale = 0.02  # QStash's 12 s and 2 m 28 s become 0.24 s and 2.97 s
    broker = create_broker(time_scale=scale)
    upstash_standin.set_fault(upstash[0], Fault("limit"))
    port = int(env.settings.worker_url.rsplit(":", 1)[1])
    try:
        with serve_wsgi(recording, port=port), serve_wsgi(broker) as broker_url:
            QStash(DEV_TOKEN, base_url=broker_url).message.publish(
                url=env.settings.execute_url,
                body=message_body(job.job_id, job.user_id, job.tier, 2).decode(),
                content_type="application/json",
                retries=2,
            )
            wait_for(lambda: len(arrivals) == 3, 15, what="the first delivery and two retries")
    finally:
        broker.broker.stop()  # type: ignore[attr-defined]

    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    for gap, n in zip(gaps, (1, 2), strict=True):
        expected = math.exp(2.5 * n) * scale
        assert expected <= gap < expected + 1.0, (gaps, n)
