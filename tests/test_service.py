"""The producer's submit rules (lib/service.py) against real Redis, Postgres and the dev broker.

Publishing goes through the real `QStashPublisher` (the official SDK) to the project's
QStash-compatible dev broker. No worker listens at WORKER_URL: the broker's delivery attempts
fail in the background, which these tests do not look at.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from helpers.backends import live_for_user
from helpers.net import free_port
from helpers.producer import ProducerEnv, body, events_of, new_user
from helpers.stack import JD

from lib.errors import (
    ConflictError,
    InputError,
    QuotaError,
    RateLimitError,
    UnavailableError,
)
from lib.models import MAX_JOB_DESCRIPTION_CHARS, MAX_RESUME_CHARS

if TYPE_CHECKING:
    from helpers.worker import Db


@pytest.fixture
def env(make_producer: Callable[..., ProducerEnv]) -> ProducerEnv:
    """The producer (fixtures/inprocess.py's `env` is a worker)."""
    return make_producer()


# The happy path --------------------------------------------------------------------------------


def test_a_submit_admits_charges_and_enqueues_exactly_one_message(env: ProducerEnv, db: Db) -> None:
    user = new_user()

    submitted = env.producer.submit(user, body(), None)

    job = submitted.job
    assert submitted.created is True
    assert (job.status, job.tier, job.cost, job.attempts) == ("queued", "paid", 1, 0)
    row = db.job(job.id)
    assert row["status"] == "queued" and row["enqueued_at"] is not None
    events = events_of(env, job.id)
    assert [(t, d["status"], d["attempt"], d["job_id"]) for t, d in events] == [
        ("status", "queued", 0, job.id)
    ]
    assert env.published() == 1
    assert db.coins(user) == 4
    assert db.ledger(job.id) == [("debit", -1)]
    assert env.state.live("paid") == 1
    assert live_for_user(env.state, user, "paid") == 1
    assert env.producer.verifier.stream_user(submitted.stream_token, job.id) == user
    assert submitted.body()["events_url"] == (
        f"/api/jobs/{job.id}/events?token={submitted.stream_token}"
    )


def test_inputs_exactly_at_the_size_limits_are_accepted(env: ProducerEnv, db: Db) -> None:
    payload = body(tier="free")
    payload["input"] = {
        "resume_text": "r" * MAX_RESUME_CHARS,
        "job_description": "d" * MAX_JOB_DESCRIPTION_CHARS,
    }

    submitted = env.producer.submit(new_user(), payload, None)

    assert submitted.created and db.job(submitted.job.id)["tier"] == "free"


# Dependencies down -----------------------------------------------------------------------------


def test_a_submit_while_the_broker_is_down_is_refused_and_leaves_nothing_charged_or_queued(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    down = make_producer(qstash_url=f"http://127.0.0.1:{free_port()}")
    user, key = new_user(), "key-broker-down"

    started = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        down.producer.submit(user, body(), key)

    assert time.monotonic() - started < 5
    assert (caught.value.status, caught.value.code) == (503, "unavailable")
    assert db.coins(user) == 5
    jobs = db.jobs_of(user)
    assert len(jobs) == 1 and jobs[0]["status"] == "failed"
    assert db.ledger(jobs[0]["id"]) == [("debit", -1), ("refund", 1)]
    assert down.live() == 0
    assert events_of(down, jobs[0]["id"])[-1][1]["status"] == "failed"

    up = make_producer()
    retried = up.producer.submit(user, body(), key)

    assert retried.created is True
    assert retried.job.id != jobs[0]["id"]
    assert db.job(retried.job.id)["status"] == "queued"
    assert db.coins(user) == 4
    assert up.published() == 1


def test_a_submit_while_redis_is_down_is_refused_and_charges_nothing(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    env = make_producer(redis_url=f"redis://127.0.0.1:{free_port()}")
    user = new_user()

    started = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        env.producer.submit(user, body(), "key-redis-down")

    assert time.monotonic() - started < 5
    assert caught.value.status == 503
    assert db.coins(user) == 5
    # Charged in the submit's first round trip, then taken back: the ledger shows both.
    assert db.ledger_of(user) == [("grant", 5), ("debit", -1), ("refund", 1)]
    assert db.jobs_of(user) == []
    assert env.published() == 0

    retried = make_producer().producer.submit(user, body(), "key-redis-down")

    assert retried.created is True
    assert db.coins(user) == 4


def test_a_submit_while_the_database_is_down_is_refused_and_admits_nothing(
    make_producer: Callable[..., ProducerEnv], redis_url: str, redis_prefix: str
) -> None:
    env = make_producer(database_url=f"postgresql://cs@127.0.0.1:{free_port()}/cs")
    user = new_user()

    started = time.monotonic()
    with pytest.raises(UnavailableError) as caught:
        env.producer.submit(user, body(), None)

    assert time.monotonic() - started < 10
    assert caught.value.status == 503
    assert env.live() == 0
    assert live_for_user(env.state, user, "paid") == 0
    assert env.state.backend.command("KEYS", f"{redis_prefix}job:*") == []
    assert env.published() == 0


# Idempotency -----------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_return_the_same_job_without_a_second_charge(
    env: ProducerEnv, db: Db
) -> None:
    user = new_user()
    first = env.producer.submit(user, body(), "key-1")

    second = env.producer.submit(user, body(), "key-1")

    assert (first.created, second.created) == (True, False)
    assert second.job.id == first.job.id
    assert [j["id"] for j in db.jobs_of(user)] == [first.job.id]
    assert db.coins(user) == 4
    assert db.ledger(first.job.id) == [("debit", -1)]
    assert env.published() == 1
    assert env.state.live("paid") == 1


def test_the_same_idempotency_key_with_another_body_is_a_conflict(env: ProducerEnv, db: Db) -> None:
    user = new_user()
    first = env.producer.submit(user, body(), "key-2")

    with pytest.raises(ConflictError) as caught:
        env.producer.submit(user, body(resume_text="Someone else entirely."), "key-2")

    assert (caught.value.status, caught.value.code) == (409, "idempotency_conflict")
    assert [j["id"] for j in db.jobs_of(user)] == [first.job.id]
    assert db.coins(user) == 4
    assert env.published() == 1


def test_two_concurrent_submits_with_one_key_create_one_job_and_one_message(
    env: ProducerEnv, db: Db
) -> None:
    user = new_user()
    gate = threading.Barrier(2)
    results: list[Any] = []

    def submit() -> None:
        gate.wait(5)
        try:
            results.append(env.producer.submit(user, body(), "key-race"))
        except Exception as exc:  # recorded, then asserted on below
            results.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert all(not isinstance(r, Exception) for r in results), results
    assert len({r.job.id for r in results}) == 1
    assert sorted(r.created for r in results) == [False, True]
    assert len(db.jobs_of(user)) == 1
    assert db.coins(user) == 4
    assert env.published() == 1
    assert live_for_user(env.state, user, "paid") == 1


def test_an_idempotency_key_is_per_user(env: ProducerEnv, db: Db) -> None:
    a = env.producer.submit(new_user(), body(), "shared-key")
    b = env.producer.submit(new_user(), body(), "shared-key")

    assert a.created and b.created and a.job.id != b.job.id
    assert env.published() == 2


# Tiers and quota -------------------------------------------------------------------------------


def test_a_paid_submit_without_enough_coins_is_refused_and_charges_nothing(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    env = make_producer(initial_coins=1)
    user = new_user()

    with pytest.raises(QuotaError) as caught:
        env.producer.submit(user, body("resume_customize", tier="paid"), None)

    assert (caught.value.status, caught.value.code) == (402, "quota_exhausted")
    assert db.coins(user) == 1
    assert db.free_used(user) == 0
    assert db.jobs_of(user) == []
    assert env.live() == 0
    assert env.published() == 0


def test_auto_falls_back_to_free_and_refuses_once_the_free_jobs_are_used(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    env = make_producer(initial_coins=1, free_daily_jobs=1)
    user = new_user()

    first = env.producer.submit(user, body("resume_customize"), None)

    assert (first.job.tier, first.job.cost) == ("free", 0)
    assert db.coins(user) == 1
    assert db.free_used(user) == 1
    assert env.state.live("free") == 1 and env.state.live("paid") == 0

    with pytest.raises(QuotaError) as caught:
        env.producer.submit(user, body("interview_prep"), None)

    assert caught.value.status == 402
    assert caught.value.details == {"coins": 1, "free_jobs_left_today": 0}
    assert db.coins(user) == 1
    assert db.free_used(user) == 1
    assert [j["id"] for j in db.jobs_of(user)] == [first.job.id]
    assert env.published() == 1


def test_auto_picks_paid_when_the_coins_cover_the_cost(env: ProducerEnv, db: Db) -> None:
    user = new_user()

    submitted = env.producer.submit(user, body("interview_prep"), None)

    assert (submitted.job.tier, submitted.job.cost) == ("paid", 2)
    assert db.coins(user) == 3
    assert db.free_used(user) == 0


def test_a_full_tier_answers_backpressure_and_charges_nothing(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    env = make_producer(queue_max_paid=1)
    admitted = env.producer.submit(new_user(), body(), None)
    user = new_user()

    with pytest.raises(RateLimitError) as caught:
        env.producer.submit(user, body(), None)

    assert (caught.value.status, caught.value.code) == (429, "backpressure")
    assert caught.value.retry_after and caught.value.retry_after >= 1
    assert db.coins(user) == 5
    assert db.jobs_of(user) == []
    assert env.published() == 1
    # The refused job's stream was never started: the admitted job's keys are the only ones
    # (its stream and its owner, which the user's event stream reads).
    keys = env.state.backend.command("KEYS", f"{env.settings.redis_prefix}job:*")
    job_id = admitted.job.id
    assert sorted(keys) == sorted([env.state.keys.events(job_id), env.state.keys.owner(job_id)])


def test_a_user_at_their_concurrency_limit_is_refused_and_the_free_job_is_given_back(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    env = make_producer(initial_coins=0, free_daily_jobs=3)
    user = new_user()
    first = env.producer.submit(user, body(), "key-first")

    with pytest.raises(RateLimitError) as caught:
        env.producer.submit(user, body(resume_text="Another resume."), "key-second")

    assert (caught.value.status, caught.value.code) == (429, "user_concurrency")
    assert db.free_used(user) == 1
    assert [j["id"] for j in db.jobs_of(user)] == [first.job.id]
    assert live_for_user(env.state, user, "free") == 1
    assert env.published() == 1


# Input validation ------------------------------------------------------------------------------

INVALID: dict[str, tuple[Any, str]] = {
    "an unknown kind": (body("cover_letter"), "kind"),
    "a missing kind": ({"input": body()["input"]}, "kind"),
    "a missing resume_text": (
        {"kind": "job_match", "input": {"job_description": JD}},
        "input.resume_text",
    ),
    "a blank resume_text": (body(resume_text="   "), "input.resume_text"),
    "a resume_text over 20,000 characters": (
        body(resume_text="r" * (MAX_RESUME_CHARS + 1)),
        "input.resume_text",
    ),
    "a job_description over 10,000 characters": (
        body(job_description="d" * (MAX_JOB_DESCRIPTION_CHARS + 1)),
        "input.job_description",
    ),
    "an extra top-level field": ({**body(), "priority": "high"}, "priority"),
    "an extra input field": (body(salary="lots"), "input.salary"),
    "a list body": ([body()], "body"),
    "a string body": ("job_match", "body"),
    "an input that is not an object": ({"kind": "job_match", "input": "text"}, "input"),
    "an invalid tier": (body(tier="gold"), "tier"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_submit_is_refused_with_per_field_details_and_charges_nothing(
    env: ProducerEnv, db: Db, case: str
) -> None:
    payload, field = INVALID[case]
    user = new_user()

    with pytest.raises(InputError) as caught:
        env.producer.submit(user, payload, "key-invalid")

    error = caught.value
    assert (error.status, error.code) == (400, "invalid_input")
    assert isinstance(error.details, dict) and field in error.details, error.details
    assert db.coins(user) is None  # not even the initial grant: nothing reached the database
    assert db.jobs_of(user) == []
    assert env.live() == 0
    assert env.published() == 0


def test_the_producer_logs_a_submit_and_a_cancel_with_the_users_hash_never_the_id(
    env: ProducerEnv,
) -> None:
    import io
    import logging

    from lib import logs

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.setup("INFO", "json", stream)
    try:
        user = new_user()
        job = env.producer.submit(user, body(), None).job
        env.producer.cancel(job.id, user)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    mine = [line for line in lines if line.get("job_id") == job.id]
    assert [line["msg"] for line in mine] == ["job submitted", "job cancelled"]
    assert all(line["user_id"] == logs.user_hash(user) for line in mine)
    assert user not in text
