"""Attacks on the running producer's HTTP surface (issue 11, items 3, 4, 6 and 10).

Each test drives a stack started the way `make dev` starts it (gunicorn producer, worker, dev
broker, offline LLM, real Redis and Postgres) over HTTP only, as an attacker would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from e2e_support import User

from scripts.devstack import Stack

pytestmark = pytest.mark.e2e

MAX_STREAMS = 2


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack(
        "hostile-api",
        OFFLINE_LLM_TOKENS_PER_SECOND="2000",
        SSE_MAX_STREAMS_PER_USER=str(MAX_STREAMS),
        SSE_HEARTBEAT_SECONDS="1",
    ) as running:
        yield running


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The SPEC's error shape with this status and code; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


# 10. Headers and errors ----------------------------------------------------------------------
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@pytest.mark.parametrize("path", ["/", "/index.html", "/api/health", "/api/me", "/api/nope"])
def test_no_page_or_answer_can_be_framed_or_sniffed(stack: Stack, path: str) -> None:
    response = httpx.get(stack.producer_url + path, timeout=10)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name, dict(response.headers))
    assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", ""), path


@pytest.mark.parametrize("path", ["/no-such-page", "/no/such/file.js", "/api/nope", "/api/x/y"])
def test_an_unknown_path_answers_not_found_in_the_error_shape_not_html(
    stack: Stack, path: str
) -> None:
    assert_error(httpx.get(stack.producer_url + path, timeout=10), 404, "not_found")


def test_a_chunked_body_over_the_limit_is_refused_as_payload_too_large(stack: Stack) -> None:
    user = User(stack.producer_url)
    big = b'{"kind": "job_match", "input": {"resume_text": "' + b"x" * 300_000 + b'"}}'

    def chunks() -> Iterator[bytes]:  # a generator body makes httpx send it chunked
        for start in range(0, len(big), 16_384):
            yield big[start : start + 16_384]

    with user.client() as client:
        response = client.post(
            "/api/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, "payload_too_large")
    assert user.me()["coins"] == 5
