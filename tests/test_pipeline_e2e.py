"""End to end, pipelines: `match_from_image` through the stack started as `make dev` starts it,
over HTTP only: a worker SIGKILLed in step 2 resumes at step 2, a cancel mid-step stops the
pipeline, a bad image is refused at submit. The offline LLM runs slowly enough (100 tokens/s)
that each step takes seconds."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from helpers import images
from helpers.stack import RESUME, Event, User, follow, terminal_count
from helpers.storage import upload_via_api
from httpx_sse import connect_sse

from lib.handlers import registry
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

STEPS = ["ocr_extract", "job_summary", "pre_match_audit", "job_match"]


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack(
        "pipeline",
        OFFLINE_LLM_TOKENS_PER_SECOND="100",
        LEASE_TTL_SECONDS="2",
        # The killed attempt's lease (2 s) outlives a few busy redeliveries, and the retries
        # (18 s in all; the plan allows 5) outlast a worker restart on a loaded machine (6 s of
        # them did not).
        JOB_RETRIES="5",
        JOB_RETRY_DELAY="1200 * (1 + retried)",
        WORKER_DRAIN_SECONDS="1",
    ) as running:
        yield running


@pytest.fixture
def user(stack: Stack) -> User:
    return User(stack.producer_url)


def submit(user: User, resume: str = RESUME) -> dict[str, Any]:
    path = upload_via_api(user, images.png(width=64, height=32))
    with user.client() as client:
        response = client.post(
            "/api/jobs",
            json={
                "kind": "match_from_image",
                "input": {"image": {"path": path}, "resume_text": resume},
            },
        )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def until_output_in_step(stack: Stack, events_url: str, step: int) -> list[Event]:
    """Read the job's stream until step `step` began and streamed some output."""
    seen: list[Event] = []
    in_step = False
    with (
        httpx.Client(base_url=stack.producer_url, timeout=httpx.Timeout(60.0)) as client,
        connect_sse(client, "GET", events_url) as source,
    ):
        for sse in source.iter_sse():
            if not sse.data:
                continue
            seen.append(Event(sse.id, sse.event, json.loads(sse.data)))
            in_step = in_step or (sse.event == "step" and seen[-1].data["step"] == step)
            if in_step and sse.event == "delta":
                return seen
    raise AssertionError(f"the stream ended before step {step}: {[e.type for e in seen]}")


def steps_begun(stream: list[Event]) -> list[int]:
    return [e.data["step"] for e in stream if e.type == "step"]


def test_a_pipeline_streams_each_step_and_succeeds_charged_once(stack: Stack, user: User) -> None:
    body = submit(user)
    assert body["job"]["cost"] == 4

    stream = follow(stack.producer_url, body["events_url"], timeout=120)

    assert steps_begun(stream) == [0, 1, 2, 3]
    assert [e.data["name"] for e in stream if e.type == "step"] == STEPS
    assert terminal_count(stream) == 1 and stream[-1].data["status"] == "succeeded"
    final = user.job(body["job"]["id"])
    registry()["match_from_image"].result_model.model_validate(final["result"])
    assert user.me()["coins"] == 1


def test_an_audit_against_the_match_ends_the_pipeline_after_three_steps_charged_once(
    stack: Stack, user: User
) -> None:
    body = submit(user, RESUME + " [[llm:audit_stop]]")  # the audit answers proceed: false

    stream = follow(stack.producer_url, body["events_url"], timeout=120)

    assert [e.data["name"] for e in stream if e.type == "step"] == STEPS[:-1]
    assert terminal_count(stream) == 1 and stream[-1].data["status"] == "succeeded"
    final = user.job(body["job"]["id"])
    registry()["match_from_image"].result_model.model_validate(final["result"])
    assert final["result"]["stopped_by"] == "pre_match_audit"
    assert final["result"]["job_match"] is None
    assert user.me()["coins"] == 1  # charged as submitted


def test_a_worker_sigkilled_in_step_2_resumes_at_step_2(stack: Stack, user: User) -> None:
    body = submit(user)
    until_output_in_step(stack, body["events_url"], 1)
    kept = user.job(body["job"]["id"])["steps"]
    assert list(kept) == ["ocr_extract"]
    worker = stack.component("worker")
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    stack.restart("worker")

    stream = follow(stack.producer_url, body["events_url"], timeout=180)

    assert stream[-1].data["status"] == "succeeded", user.job(body["job"]["id"])["error"]
    assert terminal_count(stream) == 1
    begun = steps_begun(stream)
    assert begun.count(0) == 1 and begun.count(1) >= 2 and begun[-2:] == [2, 3]
    final = user.job(body["job"]["id"])
    assert final["result"]["ocr_extract"] == kept["ocr_extract"]  # step 1 never ran again
    assert user.me()["coins"] == 1  # charged once


def test_a_cancel_mid_step_stops_the_pipeline_and_applies_the_refund_rule_once(
    stack: Stack, user: User
) -> None:
    body = submit(user)
    until_output_in_step(stack, body["events_url"], 2)

    assert user.post(f"/api/jobs/{body['job']['id']}/cancel").status_code == 202

    stream = follow(stack.producer_url, body["events_url"], timeout=60)
    assert stream[-1].data["status"] == "cancelled" and terminal_count(stream) == 1
    assert 3 not in steps_begun(stream)
    final = user.job(body["job"]["id"])
    assert final["status"] == "cancelled" and sorted(final["steps"]) == sorted(STEPS[:2])
    # Steps 1 and 2 were readable in the job: delivered output, weighed against the whole job.
    assert user.me()["coins"] in (1, 5)
    assert user.me()["active_jobs"] == 0


def test_a_bad_image_is_refused_at_submit_and_charges_nothing(user: User) -> None:
    path = upload_via_api(user, images.png_without_size())
    with user.client() as client:
        response = client.post(
            "/api/jobs",
            json={
                "kind": "match_from_image",
                "input": {"image": {"path": path}, "resume_text": RESUME},
            },
        )
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_input")
    assert user.me()["coins"] == 5 and user.get("/api/jobs").json()["jobs"] == []
