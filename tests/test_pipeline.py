"""Pipelines (lib/pipelines.py): `match_from_image` submitted once and run one step per
delivery through the real worker app, on the real Redis, Postgres and the Storage stand-in.

Each delivery here is what the step's own QStash message delivers (the worker publishes the
next one to the dev broker, whose deliveries go nowhere: the test delivers each step itself).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from helpers import images
from helpers.storage import upload_direct
from werkzeug.test import TestResponse

from lib.errors import AppError
from lib.handlers import registry
from lib.pipelines import Step
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
from lib.queue.wire import message_body
from lib.service import Producer, Submitted

if TYPE_CHECKING:
    from helpers.producer import ProducerEnv
    from helpers.worker import Db, WorkerEnv

STEPS = ["ocr_extract", "job_summary", "pre_match_audit", "job_match"]
RESUME = "Jordan Lee, backend engineer since 2018. Python, Flask, PostgreSQL, Redis."


def deliver(env: WorkerEnv, submitted: Submitted, user: str) -> TestResponse:
    raw = message_body(submitted.job.id, user, submitted.job.tier, 3)
    headers = {
        "Content-Type": "application/json",
        "Upstash-Retried": "0",
        "Upstash-Message-Id": f"msg_{uuid.uuid4().hex}",
        "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
    }
    return env.app.test_client().post("/v1/execute", data=raw, headers=headers)


@pytest.fixture
def producer(make_producer: Callable[..., ProducerEnv]) -> Producer:
    return make_producer().producer


def submit(producer: Producer, storage_url: str, resume: str = RESUME) -> tuple[str, Submitted]:
    user = str(uuid.uuid4())
    path = upload_direct(storage_url, user, images.png())
    body = {
        "kind": "match_from_image",
        "input": {"image": {"path": path}, "resume_text": resume},
        "tier": "paid",
    }
    return user, producer.submit(user, body, None)


def step_events(env: WorkerEnv, job_id: str) -> list[tuple[int, str]]:
    return [(e.data["step"], e.data["name"]) for e in env.stream(job_id) if e.type == "step"]


def texts_by_step(env: WorkerEnv, job_id: str) -> dict[str, Any]:
    """Each step's streamed text (the deltas after its `step` event), parsed."""
    texts: dict[str, str] = {}
    name = ""
    for event in env.stream(job_id):
        if event.type == "step":
            name, texts[event.data["name"]] = event.data["name"], ""
        elif event.type == "delta":
            texts[name] += event.data["text"]
    return {kind: json.loads(text) for kind, text in texts.items()}


def test_a_pipeline_runs_each_step_as_its_own_delivery_and_is_charged_once(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env = make_worker()
    user, submitted = submit(producer, storage_url)
    assert submitted.job.cost == 4 and db.coins(user) == 1

    for index, kind in enumerate(STEPS[:-1]):
        assert deliver(env, submitted, user).status_code == 200
        job = producer.get(submitted.job.id, user)
        assert (job.status, job.step, job.attempts) == ("queued", index + 1, index + 1)
        assert job.steps is not None and set(job.steps) == set(STEPS[: index + 1])
        registry()[kind].result_model.model_validate(job.steps[kind])
    assert deliver(env, submitted, user).status_code == 200

    row = db.job(submitted.job.id)
    assert row["status"] == "succeeded"
    registry()["match_from_image"].result_model.model_validate(row["result"])
    assert step_events(env, submitted.job.id) == list(enumerate(STEPS))
    assert [e.data["status"] for e in env.stream(submitted.job.id) if e.type == "status"][-1] == (
        "succeeded"
    )
    assert db.ledger(submitted.job.id) == [("debit", -4)]
    assert row["result"]["stopped_by"] is None and row["result"]["pre_match_audit"]["proceed"]
    # Nobody watched, yet each step's text was written before the next step began.
    assert {**texts_by_step(env, submitted.job.id), "stopped_by": None} == row["result"]
    assert deliver(env, submitted, user).status_code == 200  # a late duplicate changes nothing
    assert db.job(submitted.job.id)["result"] == row["result"]


def test_an_audit_that_says_do_not_proceed_ends_the_pipeline_before_the_match(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env = make_worker()
    # The resume reaches steps 3 and 4 only: the audit answers proceed: false.
    user, submitted = submit(producer, storage_url, RESUME + " [[llm:audit_stop]]")

    for _ in STEPS[:-1]:
        assert deliver(env, submitted, user).status_code == 200

    row = db.job(submitted.job.id)
    assert row["status"] == "succeeded"
    registry()["match_from_image"].result_model.model_validate(row["result"])
    assert row["result"]["stopped_by"] == "pre_match_audit" and row["result"]["job_match"] is None
    assert row["result"]["pre_match_audit"]["proceed"] is False
    ran = texts_by_step(env, submitted.job.id)
    assert row["result"] == ran | {"job_match": None, "stopped_by": "pre_match_audit"}
    assert [e.data["status"] for e in env.stream(submitted.job.id) if e.type == "status"][-1] == (
        "succeeded"
    )
    # Charged as submitted: the audit's verdict is the delivered output.
    assert db.ledger(submitted.job.id) == [("debit", -4)] and db.coins(user) == 1
    assert deliver(env, submitted, user).status_code == 200  # a late delivery runs no step 4
    assert step_events(env, submitted.job.id) == list(enumerate(STEPS[:-1]))
    assert db.job(submitted.job.id)["result"] == row["result"]


def test_only_the_audit_step_has_a_stop_predicate_and_it_stops_on_proceed_false() -> None:
    pipeline = registry()["match_from_image"].pipeline
    assert pipeline is not None
    steps = pipeline.steps
    audit = {"proceed": False, "summary": "Not a job posting."}
    assert [step.stops(audit) for step in steps] == [False, False, True, False]
    assert not steps[2].stops({**audit, "proceed": True})
    assert Step("job_match", lambda _i, _s: {}).stop_when is None


def test_a_retried_step_never_runs_the_steps_before_it_again(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env = make_worker()
    # The resume reaches steps 3 and 4 only: each one's first model call fails.
    user, submitted = submit(producer, storage_url, RESUME + " [[llm:fail_once=503]]")
    deliver(env, submitted, user)
    deliver(env, submitted, user)
    kept = producer.get(submitted.job.id, user).steps

    assert deliver(env, submitted, user).status_code >= 500  # step 3's first attempt
    assert deliver(env, submitted, user).status_code == 200  # its retry
    job = producer.get(submitted.job.id, user)
    assert job.step == 3 and job.steps is not None
    assert {k: job.steps[k] for k in STEPS[:2]} == kept  # steps 1 and 2 as they were
    assert deliver(env, submitted, user).status_code >= 500
    assert deliver(env, submitted, user).status_code == 200

    assert db.job(submitted.job.id)["status"] == "succeeded"
    assert step_events(env, submitted.job.id) == [
        (0, "ocr_extract"),
        (1, "job_summary"),
        (2, "pre_match_audit"),
        (2, "pre_match_audit"),
        (3, "job_match"),
        (3, "job_match"),
    ]


def test_an_unreadable_image_fails_the_pipeline_at_its_first_step_and_refunds_it(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env, user = make_worker(), str(uuid.uuid4())
    path = upload_direct(storage_url, user, images.png(text="[[llm:unreadable]]"))
    body: dict[str, Any] = {
        "kind": "match_from_image",
        "input": {"image": {"path": path}, "resume_text": RESUME},
    }
    submitted = producer.submit(user, body, None)

    assert deliver(env, submitted, user).status_code == 489
    row = db.job(submitted.job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "unreadable_image"
    assert db.coins(user) == 5


def test_a_pipeline_failing_after_its_early_steps_keeps_them_and_refunds_by_the_rule(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env = make_worker()
    user, submitted = submit(producer, storage_url, RESUME + " [[llm:fail=400]]")
    deliver(env, submitted, user)
    deliver(env, submitted, user)

    assert deliver(env, submitted, user).status_code == 489  # step 3: a 400 is permanent

    job = producer.get(submitted.job.id, user)
    assert job.status == "failed" and job.steps is not None and set(job.steps) == set(STEPS[:2])
    ledger = db.ledger(submitted.job.id)
    assert ledger[0] == ("debit", -4) and len(ledger) == 2
    delivered = len(str(job.steps)) * 100 > 25 * registry()["match_from_image"].expected_chars
    assert ledger[1] == (("no_refund_delivered", 0) if delivered else ("refund", 4))


def test_a_bad_image_is_refused_at_submit_for_a_pipeline_too(
    producer: Producer, storage_url: str, db: Db
) -> None:
    user = str(uuid.uuid4())
    path = upload_direct(storage_url, user, images.gif())
    body = {"kind": "match_from_image", "input": {"image": {"path": path}, "resume_text": RESUME}}

    with pytest.raises(AppError) as caught:
        producer.submit(user, body, None)

    assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")
    assert db.coins(user) is None and db.jobs_of(user) == []
