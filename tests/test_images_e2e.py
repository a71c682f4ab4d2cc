"""End to end, image input: `POST /api/uploads`, the upload straight to Storage (the stand-in),
a submit naming it, and the job through the broker, the worker and the offline LLM's image
part; each bad image refused at submit with nothing charged. Over HTTP only, on both profiles."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from helpers import images
from helpers.stack import User, follow, terminal_count
from helpers.storage import upload_via_api

from lib.handlers import registry
from lib.models import VISION_KINDS
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(e2e_stack: Stack) -> Stack:
    """Once on each profile (tests/fixtures/stacks.py `e2e_stack`)."""
    return e2e_stack


@pytest.fixture
def user(stack: Stack) -> User:
    return User(stack.producer_url)


def submit(user: User, kind: str, job_input: dict[str, Any]) -> httpx.Response:
    with user.client() as client:
        return client.post("/api/jobs", json={"kind": kind, "input": job_input})


def assert_nothing_charged(user: User) -> None:
    me = user.me()
    assert (me["coins"], me["active_jobs"]) == (5, 0)
    assert user.get("/api/jobs").json()["jobs"] == []


@pytest.mark.parametrize("kind", sorted(VISION_KINDS))
def test_an_uploaded_screenshot_runs_each_image_kind_through_the_stack(
    stack: Stack, user: User, kind: str
) -> None:
    path = upload_via_api(user, images.png(width=40, height=20))
    assert path.startswith(f"{user.id}/")

    response = submit(user, kind, {"image": {"path": path}})

    assert response.status_code == 202, response.text
    body = response.json()
    stream = follow(stack.producer_url, body["events_url"])
    assert stream[-1].data["status"] == "succeeded", stream[-1].data
    assert terminal_count(stream) == 1 and "delta" in [e.type for e in stream]
    final = user.job(body["job"]["id"])
    registry()[kind].result_model.model_validate(final["result"])
    assert user.me()["coins"] == 5 - final["cost"]


def test_an_unreadable_image_fails_the_job_with_a_clear_error_and_a_full_refund(
    stack: Stack, user: User
) -> None:
    path = upload_via_api(user, images.png(text="[[llm:unreadable]]"))

    body = submit(user, "ocr_extract", {"image": {"path": path}}).json()
    stream = follow(stack.producer_url, body["events_url"])

    assert stream[-1].data["status"] == "failed"
    errors = [e.data for e in stream if e.type == "error"]
    assert errors and errors[-1]["code"] == "unreadable_image"
    assert user.job(body["job"]["id"])["error"]["code"] == "unreadable_image"
    assert user.me()["coins"] == 5


def bad_path(user: User, case: str) -> str:
    if case == "another user's upload":
        return upload_via_api(User(user.base), images.png())
    if case == "an upload never completed":
        with user.client() as client:
            return str(
                client.post("/api/uploads", json={"content_type": "image/png"}).json()["path"]
            )
    if case == "a GIF declared as PNG":
        return upload_via_api(user, images.gif())
    if case == "an empty file":
        return upload_via_api(user, b"")
    assert case == "a header without a size"
    return upload_via_api(user, images.png_without_size())


BAD = {
    "another user's upload": (400, "invalid_input"),
    "an upload never completed": (400, "invalid_input"),
    "a GIF declared as PNG": (415, "unsupported_media_type"),
    "an empty file": (400, "invalid_input"),
    "a header without a size": (400, "invalid_input"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_image_is_a_clear_4xx_at_submit_and_charges_nothing(user: User, case: str) -> None:
    path = bad_path(user, case)

    response = submit(user, "job_vision_summary", {"image": {"path": path}})

    assert (response.status_code, response.json()["error"]["code"]) == BAD[case]
    assert_nothing_charged(user)


UPLOAD_REFUSALS = {
    "a GIF": ({"content_type": "image/gif"}, 415, "unsupported_media_type"),
    "a declared size over IMAGE_MAX_BYTES": (
        {"content_type": "image/png", "size": 50 * 1024 * 1024},
        413,
        "payload_too_large",
    ),
    "an unknown field": ({"content_type": "image/png", "path": "x/y.png"}, 400, "invalid_input"),
    "no content type": ({}, 400, "invalid_input"),
}


@pytest.mark.parametrize("case", list(UPLOAD_REFUSALS))
def test_an_upload_request_for_anything_but_a_small_image_is_refused(user: User, case: str) -> None:
    body, status, code = UPLOAD_REFUSALS[case]
    with user.client() as client:
        response = client.post("/api/uploads", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_an_upload_url_needs_a_signed_in_user(stack: Stack) -> None:
    response = httpx.post(f"{stack.producer_url}/api/uploads", json={"content_type": "image/png"})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthorized")


def test_upload_urls_are_limited_per_user_and_hour_with_a_429_that_says_when(
    stack: Stack, user: User
) -> None:
    # Each URL lets its holder store up to IMAGE_MAX_BYTES: UPLOADS_PER_HOUR (30) per user.
    with user.client() as client:
        granted = [
            client.post("/api/uploads", json={"content_type": "image/png"}) for _ in range(30)
        ]
        refused = client.post("/api/uploads", json={"content_type": "image/png"})
        bad = client.post("/api/uploads", json={"content_type": "text/html"})
    assert [r.status_code for r in granted] == [201] * 30
    # Each granted URL's path is recorded for the retention sweep, in the quota's own Lua call.
    issued = redis.Redis.from_url(stack.env["REDIS_URL"]).zmscore(
        f"{stack.env.get('REDIS_PREFIX', 'cs:')}uploads:issued", [r.json()["path"] for r in granted]
    )
    assert None not in issued
    error = refused.json()["error"]
    assert (refused.status_code, error["code"]) == (429, "rate_limited")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 3600 and error["details"]["next_slot_s"] == retry_after
    assert error["details"]["limit"] == 30
    assert bad.status_code == 415  # a bad request is refused as such, before the quota
    other = User(stack.producer_url)
    with other.client() as client:
        assert client.post("/api/uploads", json={"content_type": "image/png"}).status_code == 201
