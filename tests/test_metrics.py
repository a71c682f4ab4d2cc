"""lib/metrics.py through the worker's /metrics: real executor, Redis, Postgres and offline LLM.

Counters are process-wide, so each test compares a scrape after the job with one before it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from helpers.net import free_port, wait_for
from helpers.worker import deliver
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

from lib.errors import RateLimitError
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
from lib.queue.wire import message_body

if TYPE_CHECKING:
    from helpers.worker import WorkerEnv


MODEL = "openai:offline"


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def scrape(env: WorkerEnv) -> Scrape:
    response = env.app.test_client().get("/metrics")
    assert response.status_code == 200
    return Scrape(response.get_data(as_text=True))


# Jobs and attempts ----------------------------------------------------------------------------


def test_a_job_that_succeeds_on_its_second_attempt_finishes_once_after_two_attempts(
    env: WorkerEnv,
) -> None:
    job = env.create_job("[[llm:fail_once=503]]", kind="interview_prep")
    labels = {"kind": "interview_prep", "tier": "paid"}
    before = scrape(env)

    assert deliver(env, job).status_code == 503
    assert deliver(env, job, retried=1).status_code == 200

    after = scrape(env)
    for outcome, attempts in (("retry", 1), ("succeeded", 1)):
        assert after.value("cs_job_attempts_total", outcome=outcome, **labels) == (
            before.value("cs_job_attempts_total", outcome=outcome, **labels) + attempts
        )
    assert after.value("cs_jobs_finished_total", **labels) == (
        before.value("cs_jobs_finished_total", **labels) + 1
    )
    assert after.value("cs_jobs_finished_total", outcome="succeeded", **labels) == (
        before.value("cs_jobs_finished_total", outcome="succeeded", **labels) + 1
    )
    assert after.value("cs_job_attempt_seconds_count", **labels) == (
        before.value("cs_job_attempt_seconds_count", **labels) + 2
    )


def test_a_retry_finishes_nothing_and_the_last_failed_attempt_finishes_the_job_as_failed(
    env: WorkerEnv,
) -> None:
    job = env.create_job("[[llm:fail=500]]", kind="resume_customize")
    labels = {"kind": "resume_customize", "tier": "paid"}
    before = scrape(env)

    assert deliver(env, job, retried=0, retries=1).status_code == 503
    middle = scrape(env)
    assert deliver(env, job, retried=1, retries=1).status_code == 489

    after = scrape(env)
    assert middle.value("cs_jobs_finished_total", **labels) == before.value(
        "cs_jobs_finished_total", **labels
    )
    assert after.value("cs_jobs_finished_total", outcome="failed", **labels) == (
        before.value("cs_jobs_finished_total", outcome="failed", **labels) + 1
    )
    assert after.value("cs_job_attempts_total", outcome="failed", **labels) == (
        before.value("cs_job_attempts_total", outcome="failed", **labels) + 1
    )


def test_a_cancelled_job_finishes_as_cancelled(env: WorkerEnv) -> None:
    from lib.events import emit_terminal

    job = env.create_job("[[llm:slow=30]]")
    labels = {"kind": "job_match", "tier": "paid"}
    before = scrape(env)
    answers: list[TestResponse] = []
    runner = threading.Thread(target=lambda: answers.append(deliver(env, job)))
    runner.start()
    wait_for(lambda: env.lease_held(job.job_id), timeout=10, what="the attempt's lease")
    emit_terminal(env.state, job.job_id, "cancelled", result=None, error=None, attempt=1)
    runner.join(10)
    assert not runner.is_alive() and answers[0].get_json()["status"] == "cancelled"

    after = scrape(env)
    assert after.value("cs_jobs_finished_total", outcome="cancelled", **labels) == (
        before.value("cs_jobs_finished_total", outcome="cancelled", **labels) + 1
    )
    assert after.value("cs_jobs_finished_total", outcome="succeeded", **labels) == (
        before.value("cs_jobs_finished_total", outcome="succeeded", **labels)
    )


def test_the_failure_callback_finishes_a_job_as_failed_once(env: WorkerEnv) -> None:
    import base64
    import json

    job = env.create_job(kind="interview_prep", tier="paid")
    labels = {"kind": "interview_prep", "tier": "paid", "outcome": "failed"}
    raw = json.dumps(
        {
            "status": 500,
            "retried": 3,
            "sourceBody": base64.b64encode(
                message_body(job.job_id, job.user_id, job.tier, 3)
            ).decode(),
        }
    ).encode()
    before = scrape(env)

    for _ in range(2):
        response = env.app.test_client().post(
            "/v1/failed",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.failed_url, raw),
            },
        )
        assert response.status_code == 200

    assert scrape(env).value("cs_jobs_finished_total", **labels) == (
        before.value("cs_jobs_finished_total", **labels) + 1
    )


# The model: time to first token, tokens in and out ---------------------------------------------


def test_time_to_first_token_is_measured_from_the_start_of_the_attempt(env: WorkerEnv) -> None:
    job = env.create_job("[[llm:slow=5]]", kind="resume_customize", tier="free", cost=0)
    labels = {"kind": "resume_customize", "tier": "free"}
    before = scrape(env)
    started = time.monotonic()

    response = deliver(env, job)
    took = time.monotonic() - started

    assert response.status_code == 200
    after = scrape(env)
    name = "cs_llm_first_token_seconds"
    assert after.value(f"{name}_count", **labels) == before.value(f"{name}_count", **labels) + 1
    assert after.value(f"{name}_bucket", le="+Inf", **labels) == (
        before.value(f"{name}_bucket", le="+Inf", **labels) + 1
    )
    first = after.value(f"{name}_sum", **labels) - before.value(f"{name}_sum", **labels)
    # Longer than from the model call's start (the attempt began before it), within the attempt.
    from_call = response.get_json()["usage"]["first_token_s"]
    assert 0 < from_call < first < took


def test_tokens_in_and_out_are_the_usage_the_provider_reports(env: WorkerEnv) -> None:
    job = env.create_job(kind="job_match", tier="free", cost=0)
    labels = {"kind": "job_match", "tier": "free", "model": MODEL}
    before = scrape(env)

    response = deliver(env, job)

    assert response.status_code == 200
    usage = response.get_json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    after = scrape(env)
    for direction, reported in (("in", "prompt_tokens"), ("out", "completion_tokens")):
        grown = after.value("cs_llm_tokens_total", direction=direction, **labels) - before.value(
            "cs_llm_tokens_total", direction=direction, **labels
        )
        assert grown == usage[reported]


def test_a_stream_stopped_early_counts_its_streamed_chunks_as_tokens_out_and_nothing_in(
    env: WorkerEnv,
) -> None:
    from lib.llm import LLM, Usage

    class Enough(Exception):
        pass

    seen: list[str] = []
    metered: list[tuple[Usage, float | None]] = []

    def on_text(text: str, *_: Any) -> None:
        seen.append(text)
        if len(seen) == 5:
            raise Enough

    with pytest.raises(Enough):
        LLM(env.settings).stream_json(
            MODEL,
            system="Answer in JSON.",
            user="Resume: [[llm:slow=5]]",
            schema_name="job_match",
            schema={"type": "object", "properties": {"summary": {"type": "string"}}},
            on_text=on_text,
            on_usage=lambda usage, first: metered.append((usage, first)),
        )

    [(usage, first_token_at)] = metered
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 5)
    assert first_token_at is not None and first_token_at <= time.monotonic()


# Admission refusals, counted by the producer's ADMIT script in Redis ------------------------------


def test_admission_refusals_are_counted_by_tier_and_reason_and_admissions_write_nothing(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    env = make_worker(queue_max_free=1, user_max_active_paid=1, metrics_redis_refresh_seconds=0)
    stats = env.state.keys.admission_stats()
    user = env.create_job(tier="paid").user_id
    env.create_job(tier="free", cost=0)
    assert env.state.backend.command("EXISTS", stats) == 0  # admitting costs no extra write

    for attempt in range(2):
        with pytest.raises(RateLimitError) as refused:
            env.create_job(tier="paid", user_id=user)
        assert refused.value.code == "user_concurrency", attempt
    with pytest.raises(RateLimitError) as full:
        env.create_job(tier="free", cost=0)
    assert full.value.code == "backpressure"

    metrics = scrape(env)
    name = "cs_admission_rejections_total"
    assert metrics.value(name, tier="paid", reason="user_concurrency") == 2
    assert metrics.value(name, tier="free", reason="backpressure") == 1
    assert metrics.value(name, tier="paid", reason="backpressure") == 0
    assert metrics.value(name, tier="free", reason="user_concurrency") == 0
    assert env.state.admission_rejections() == {
        ("paid", "user_concurrency"): 2,
        ("free", "backpressure"): 1,
    }


def test_admission_refusals_are_read_from_redis_at_most_once_per_refresh_period(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    env = make_worker(queue_max_free=0, metrics_redis_refresh_seconds=3600)
    name = "cs_admission_rejections_total"
    assert scrape(env).value(name, tier="free", reason="backpressure") == 0

    with pytest.raises(RateLimitError):
        env.create_job(tier="free", cost=0)

    assert scrape(env).value(name, tier="free", reason="backpressure") == 0  # not re-read yet
    assert env.state.admission_rejections() == {("free", "backpressure"): 1}


def test_both_redis_adapters_read_the_refusal_counts_alike(
    redis_backend: Any, redis_prefix: str
) -> None:
    from lib.state import State

    st = State(redis_backend, prefix=redis_prefix, limits={"free": (0, 1), "paid": (5, 0)})
    assert st.admission_rejections() == {}
    for tier in ("free", "free", "paid"):
        with pytest.raises(RateLimitError):
            st.admit(f"job-{time.monotonic_ns()}", tier, "user-1")
    assert st.admission_rejections() == {
        ("free", "backpressure"): 2,
        ("paid", "user_concurrency"): 1,
    }


# Redis and database errors --------------------------------------------------------------------


@pytest.fixture
def scoped_worker(make_worker: Callable[..., WorkerEnv]) -> Callable[..., WorkerEnv]:
    """A worker on the real servers except where overrides point at a closed port: a small store
    pool that gives up after a second."""
    return functools.partial(make_worker, pool_size=2, store_timeout=1.0)


def test_a_database_that_cannot_be_reached_is_counted_as_db_errors(
    scoped_worker: Callable[..., WorkerEnv], make_worker: Callable[..., WorkerEnv]
) -> None:
    job = make_worker().create_job()
    down = scoped_worker(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    before = scrape(down)

    assert deliver(down, job).status_code == 503
    assert down.app.test_client().get("/readyz").status_code == 503

    after = scrape(down)
    assert after.value("cs_db_errors_total") >= before.value("cs_db_errors_total") + 2
    assert after.value("cs_redis_errors_total") == before.value("cs_redis_errors_total")


def test_a_redis_that_cannot_be_reached_is_counted_as_redis_errors(
    scoped_worker: Callable[..., WorkerEnv], make_worker: Callable[..., WorkerEnv]
) -> None:
    job = make_worker().create_job()
    down = scoped_worker(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    before = scrape(down)

    assert deliver(down, job).status_code == 503
    assert down.app.test_client().get("/readyz").status_code == 503

    after = scrape(down)
    assert after.value("cs_redis_errors_total") >= before.value("cs_redis_errors_total") + 2
    assert after.value("cs_db_errors_total") == before.value("cs_db_errors_total")
