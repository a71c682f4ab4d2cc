"""End to end with `QSTASH_MODE=direct`: no broker, deliveries signed and sent by the producer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.net import wait_for
from helpers.stack import RESUME, User, follow, terminal_count

from scripts.stack.devstack import PROFILES, Ports, Stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:5173"


@pytest.fixture(scope="module", params=PROFILES)
def stack(
    request: pytest.FixtureRequest,
    redis_url: str,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    ports = Ports.free()
    overrides = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_PREFIX": f"e2e-direct-{uuid.uuid4().hex[:6]}:",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "direct",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "500",
        "ALLOWED_ORIGINS": ORIGIN,
        "WEB_CONCURRENCY": "1",
    }
    logs = Path(tmp_path_factory.mktemp(f"direct-{request.param}-logs"))
    with Stack(
        ports=ports, profile=request.param, overrides=overrides, log_dir=logs, quiet=True
    ) as running:
        yield running


def test_direct_mode_runs_a_job_without_a_broker(stack: Stack) -> None:
    assert "broker" not in [c.name for c in stack.components]
    user = User(stack.producer_url)
    body = user.submit("job_match").json()
    stream = follow(stack.producer_url, body["events_url"])
    assert stream[-1].data["status"] == "succeeded" and terminal_count(stream) == 1
    assert user.job(body["job"]["id"])["status"] == "succeeded"


def test_direct_mode_fails_and_refunds_a_permanent_failure(stack: Stack) -> None:
    user = User(stack.producer_url)
    body = user.submit("job_match", resume=RESUME + " [[llm:invalid_json]]").json()
    # Read once it has failed: its unread output was never delivered, so it is refunded.
    wait_for(lambda: user.job(body["job"]["id"])["status"] == "failed", 30, what="the failure")
    stream = follow(stack.producer_url, body["events_url"])
    assert stream[-1].data["status"] == "failed"
    assert user.job(body["job"]["id"])["error"]["code"] == "invalid_model_output"
    assert user.me()["coins"] == 5


def test_cors_allows_only_the_configured_front_end_origins(stack: Stack) -> None:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }
    preflight = httpx.options(f"{stack.producer_url}/api/jobs", headers=headers)
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    other = httpx.options(
        f"{stack.producer_url}/api/jobs", headers={**headers, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
