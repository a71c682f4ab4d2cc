"""Image input (lib/images.py, lib/storage.py) and the kinds that read it: ocr_extract and
job_vision_summary.

Submitted through the real producer (real Redis, Postgres, dev broker, and the Storage stand-in
on the filesystem) and run through the real worker app and the offline LLM, which reads the
image part. Every refusal at submit charges nothing and writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from helpers import images
from helpers.net import free_port
from helpers.storage import upload_direct
from werkzeug.test import TestResponse

from lib.errors import AppError, InputError, UnavailableError
from lib.handlers import registry
from lib.handlers.base import detect_language
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
from lib.queue.wire import message_body
from lib.service import Producer, Submitted

if TYPE_CHECKING:
    from helpers.producer import ProducerEnv
    from helpers.worker import Db, WorkerEnv

IMAGE_KINDS = ["ocr_extract", "job_vision_summary"]
COSTS = {"ocr_extract": 1, "job_vision_summary": 2}


def new_user() -> str:
    return str(uuid.uuid4())


def submit(producer: Producer, user: str, kind: str, job_input: dict[str, Any]) -> Submitted:
    return producer.submit(user, {"kind": kind, "input": job_input, "tier": "paid"}, None)


def deliver(env: WorkerEnv, submitted: Submitted, user: str) -> TestResponse:
    """POST the job's QStash delivery to the worker, signed as the broker signs it."""
    raw = message_body(submitted.job.id, user, submitted.job.tier, 3)
    headers = {
        "Content-Type": "application/json",
        "Upstash-Retried": "0",
        "Upstash-Message-Id": f"msg_{submitted.job.id}",
        "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
    }
    return env.app.test_client().post("/v1/execute", data=raw, headers=headers)


@pytest.fixture
def producer(make_producer: Callable[..., ProducerEnv]) -> Producer:
    return make_producer().producer


def assert_nothing_charged(producer: Producer, db: Db, user: str) -> None:
    assert db.coins(user) is None  # the submit never reached the database
    assert db.jobs_of(user) == []
    assert producer.state.live("paid") == 0


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_good_image_job_of_each_kind_is_accepted_and_charged_its_cost(
    producer: Producer, storage_url: str, db: Db, kind: str
) -> None:
    user = new_user()
    path = upload_direct(storage_url, user, images.png())

    submitted = submit(producer, user, kind, {"image": {"path": path}})

    assert submitted.created and submitted.job.cost == COSTS[kind] == registry()[kind].cost
    assert db.ledger(submitted.job.id) == [("debit", -COSTS[kind])]
    stored = db.one("select input from cs_jobs where id = %s", submitted.job.id)
    assert stored["image"] == {"path": path} and stored["language"] == "en"


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_each_image_kind_runs_through_the_worker_to_a_valid_result_in_the_asked_language(
    producer: Producer,
    make_worker: Callable[..., WorkerEnv],
    storage_url: str,
    db: Db,
    kind: str,
    lang: str,
) -> None:
    env, user = make_worker(), new_user()
    path = upload_direct(storage_url, user, images.jpeg(), "image/jpeg", "jpg")
    submitted = submit(producer, user, kind, {"image": {"path": path}, "language": lang})

    response = deliver(env, submitted, user)

    assert response.status_code == 200, response.get_json()
    row = db.job(submitted.job.id)
    assert row["status"] == "succeeded", row["error"]
    registry()[kind].result_model.model_validate(row["result"])
    assert detect_language(json.dumps(row["result"], ensure_ascii=False)) == lang
    deltas = "".join(e.data["text"] for e in env.stream(submitted.job.id) if e.type == "delta")
    assert json.loads(deltas) == row["result"]


def test_an_unreadable_image_fails_the_job_clearly_and_refunds_it(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env, user = make_worker(), new_user()
    path = upload_direct(storage_url, user, images.png(text="[[llm:unreadable]]"))
    submitted = submit(producer, user, "ocr_extract", {"image": {"path": path}})

    response = deliver(env, submitted, user)

    assert response.status_code == 489  # permanent: the broker does not retry it
    row = db.job(submitted.job.id)
    assert row["status"] == "failed"
    assert row["error"]["code"] == "unreadable_image"
    assert db.coins(user) == 5  # nothing was delivered: refunded in full
    assert db.ledger(submitted.job.id)[0] == ("debit", -1)
    assert db.ledger(submitted.job.id)[-1][1] == 1


def test_a_marker_in_the_image_reaches_the_offline_llm(
    producer: Producer, make_worker: Callable[..., WorkerEnv], storage_url: str, db: Db
) -> None:
    env, user = make_worker(), new_user()
    path = upload_direct(storage_url, user, images.png(text="[[llm:invalid_json]]"))
    submitted = submit(producer, user, "job_vision_summary", {"image": {"path": path}})

    deliver(env, submitted, user)

    row = db.job(submitted.job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "invalid_model_output"


def bad_upload(storage_url: str, user: str, case: str) -> str:
    """The path a job names for each bad-image case (uploaded where an upload exists)."""
    if case == "another user's upload":
        return upload_direct(storage_url, new_user(), images.png())
    if case == "an upload never completed":
        return f"{user}/{uuid.uuid4().hex}.png"
    if case == "another type declared as PNG":
        return upload_direct(storage_url, user, images.gif())
    if case == "text declared as PNG":
        return upload_direct(storage_url, user, b"Senior engineer wanted " * 10)
    if case == "an empty file":
        return upload_direct(storage_url, user, b"")
    if case == "a header without a size":
        return upload_direct(storage_url, user, images.png_without_size())
    assert case == "an image over IMAGE_MAX_BYTES"
    return upload_direct(storage_url, user, images.png(pad=4096))


BAD = {
    "another user's upload": (400, "invalid_input"),
    "an upload never completed": (400, "invalid_input"),
    "another type declared as PNG": (415, "unsupported_media_type"),
    "text declared as PNG": (415, "unsupported_media_type"),
    "an empty file": (400, "invalid_input"),
    "a header without a size": (400, "invalid_input"),
    "an image over IMAGE_MAX_BYTES": (413, "payload_too_large"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_each_bad_image_is_refused_at_submit_and_charges_nothing(
    make_producer: Callable[..., ProducerEnv], storage_url: str, db: Db, kind: str, case: str
) -> None:
    producer = make_producer(image_max_bytes=4096).producer
    user = new_user()
    path = bad_upload(storage_url, user, case)

    with pytest.raises(AppError) as caught:
        submit(producer, user, kind, {"image": {"path": path}})

    assert (caught.value.status, caught.value.code) == BAD[case]
    assert_nothing_charged(producer, db, user)


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no image": ({}, "input.image"),
    "a path outside any user's folder": ({"image": {"path": "../etc/passwd"}}, "input.image.path"),
    "a path with a folder inside": (
        {"image": {"path": f"{uuid.uuid4()}/a/{uuid.uuid4().hex}.png"}},
        "input.image.path",
    ),
    "a path with another extension": (
        {"image": {"path": f"{uuid.uuid4()}/{uuid.uuid4().hex}.gif"}},
        "input.image.path",
    ),
    "a path that is a number": ({"image": {"path": 7}}, "input.image.path"),
    "an image with an unknown field": (
        {"image": {"path": f"{uuid.uuid4()}/{uuid.uuid4().hex}.png", "url": "http://x"}},
        "input.image.url",
    ),
    "an unknown language": (
        {"image": {"path": f"{uuid.uuid4()}/{uuid.uuid4().hex}.png"}, "language": "fr"},
        "input.language",
    ),
    "an image given text too": (
        {"image": {"path": f"{uuid.uuid4()}/{uuid.uuid4().hex}.png"}, "job_description": "x"},
        "input.job_description",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_each_bound_of_the_image_input_is_refused_with_details_and_charges_nothing(
    producer: Producer, db: Db, case: str
) -> None:
    job_input, field = INVALID[case]
    user = new_user()

    with pytest.raises(InputError) as caught:
        submit(producer, user, "job_vision_summary", job_input)

    assert isinstance(caught.value.details, dict) and field in caught.value.details
    assert_nothing_charged(producer, db, user)


def test_an_ocr_of_an_unknown_document_type_is_refused(producer: Producer, db: Db) -> None:
    user = new_user()
    job_input = {"image": {"path": f"{user}/{uuid.uuid4().hex}.png"}, "document": "letter"}

    with pytest.raises(InputError) as caught:
        submit(producer, user, "ocr_extract", job_input)

    assert "input.document" in caught.value.details
    assert_nothing_charged(producer, db, user)


def test_an_image_submit_with_storage_down_is_a_503_and_charges_nothing(
    make_producer: Callable[..., ProducerEnv], db: Db
) -> None:
    producer = make_producer(storage_url=f"http://127.0.0.1:{free_port()}/storage/v1").producer
    user = new_user()

    with pytest.raises(UnavailableError):
        submit(producer, user, "ocr_extract", {"image": {"path": f"{user}/{'a' * 32}.png"}})

    assert_nothing_charged(producer, db, user)


def test_an_image_deleted_after_submit_fails_the_job_as_unreadable(
    producer: Producer,
    make_worker: Callable[..., WorkerEnv],
    storage_url: str,
    storage_app: Any,
    db: Db,
) -> None:
    env, user = make_worker(), new_user()
    path = upload_direct(storage_url, user, images.webp(), "image/webp", "webp")
    submitted = submit(producer, user, "ocr_extract", {"image": {"path": path}})
    (storage_app.extensions["storage_standin"].root / "job-images" / path).unlink()

    deliver(env, submitted, user)

    row = db.job(submitted.job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "unreadable_image"
    assert db.coins(user) == 5
