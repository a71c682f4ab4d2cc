"""Fuzzing the running producer from its own OpenAPI document (api/_openapi.json).

schemathesis generates requests for every documented operation, both schema-valid and
schema-violating ones, and sends them, authenticated as a dev user, to a producer started the
way `make dev` starts it. Whatever it sends, the producer must never answer 5xx, every
non-2xx answer must carry the SPEC's error body `{"error": {"code", "message", "details"}}`,
and every answer must be the one the document describes (status, media type, schema, headers).

Hypothesis adds what the document cannot generate: hostile Authorization headers, hostile
resume cursors on a real job's event stream, deeply nested JSON and U+0000 in inputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from helpers.stack import User, follow
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
FUZZ_USER = str(uuid.uuid4())
FUZZ = settings(
    max_examples=25,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

DOCUMENTED = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
schema = schemathesis.openapi.from_path(ROOT / "api" / "_openapi.json")


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack(
        "fuzz",
        OFFLINE_LLM_TOKENS_PER_SECOND="2000",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_access_token(FUZZ_USER, DEV_JWT_SECRET)}"}


def assert_spec_answer(status: int, raw_headers: Any, body: bytes, what: str) -> None:
    """No 5xx, and any non-2xx carries exactly the SPEC's error body."""
    # schemathesis' Response has list-valued headers, httpx's has str-valued ones.
    headers = {
        k.lower(): (v[0] if isinstance(v, list) else v) for k, v in dict(raw_headers).items()
    }
    assert status < 500, f"{what} answered {status}: {body[:500]!r}"
    if 200 <= status < 300:
        return
    assert headers.get("content-type", "").startswith("application/json"), (
        f"{what} answered {status} as {headers.get('content-type')}: {body[:300]!r}"
    )
    payload = httpx.Response(status, content=body).json()
    assert isinstance(payload, dict) and set(payload) == {"error"}, f"{what}: {payload!r}"
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, (
        f"{what}: {payload!r}"
    )
    assert isinstance(error["code"], str) and error["code"], f"{what}: {payload!r}"
    assert isinstance(error["message"], str) and error["message"], f"{what}: {payload!r}"
    if status == 429:
        assert int(headers["retry-after"]) >= 1, f"{what}: 429 without Retry-After"


# Every operation is fuzzed, the SSE one included: with generated job ids it never names one
# of the fuzz user's jobs, so it answers JSON errors; real streams are fuzzed further down.
@schema.parametrize()
@FUZZ
def test_no_generated_request_gets_a_5xx_and_every_error_has_the_spec_shape(
    case: schemathesis.Case, stack: Stack, auth_headers: dict[str, str]
) -> None:
    # Authenticated as the fuzz user: any generated Authorization is replaced by a valid token
    # (the coverage phase still sends some requests without one). Bad tokens are fuzzed below.
    headers = {**(case.headers or {}), **auth_headers}
    response = case.call(base_url=stack.producer_url, headers=headers, timeout=30)
    what = f"{case.method} {case.formatted_path}"
    case.validate_response(response, checks=DOCUMENTED, headers=headers)
    assert_spec_answer(response.status_code, response.headers, response.content, what)


# Header values a client can legally send (visible ASCII); gunicorn itself refuses the rest
# before the app sees them, and Vercel's edge does the same in production.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)
PATH_TEXT = st.text(st.characters(categories=["L", "N"], max_codepoint=0x7E), min_size=1)


@FUZZ
@given(
    request=st.sampled_from(
        [
            ("POST", "/api/jobs"),
            ("GET", "/api/jobs"),
            ("GET", "/api/jobs/{id}"),
            ("POST", "/api/jobs/{id}/cancel"),
            ("GET", "/api/jobs/{id}/events"),
            ("GET", "/api/me"),
        ]
    ),
    job_id=st.one_of(st.uuids().map(str), PATH_TEXT),
    authorization=st.one_of(
        st.none(),
        HEADER_TEXT,
        HEADER_TEXT.filter(bool).map(lambda t: f"Bearer {t}"),
        st.sampled_from(["Bearer", "Basic dXNlcjpwYXNz", "bearer a.b.c"]),
        # alg none, and an HS256 header over junk
        st.just("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiYXVkIjoiYXV0aGVudGljYXRlZCJ9."),
        HEADER_TEXT.map(lambda t: f"Bearer eyJhbGciOiJIUzI1NiJ9.{t}.{t}"),
    ),
)
def test_a_request_without_a_valid_access_token_gets_401_in_the_spec_shape(
    stack: Stack, request: tuple[str, str], job_id: str, authorization: str | None
) -> None:
    method, path = request
    url = path.replace("{id}", job_id)
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=stack.producer_url, timeout=30) as client:
        response = client.request(method, url, headers=headers)
    assert_spec_answer(response.status_code, response.headers, response.content, url)
    # A job id that is not a UUID can name no job: 404 before any auth is needed (events).
    assert response.status_code in (401, 404), response.text
    if response.status_code == 404:
        assert path.endswith("/events"), url


@pytest.fixture(scope="module")
def finished_job(stack: Stack) -> tuple[User, dict[str, Any]]:
    user = User(stack.producer_url)
    response = user.submit("job_match")
    assert response.status_code == 202, response.text
    body = response.json()
    assert follow(stack.producer_url, body["events_url"])[-1].data["status"] == "succeeded"
    return user, body


CURSOR_BUG = (
    "bug: a Last-Event-ID / last_event_id that is not a Redis stream id reaches XREAD, whose "
    "ResponseError escapes lib.service.Producer.stream after the 200 headers went out: the "
    "stream is cut mid-response (and '$' waits for new entries until SSE_MAX_SECONDS)"
)


def read_stream_from(stack: Stack, events_url: str, cursor: str) -> httpx.Response:
    url = httpx.URL(stack.producer_url + events_url).copy_merge_params({"last_event_id": cursor})
    # A finished job's stream is served in well under a second; a read timeout means it hangs.
    with httpx.Client(timeout=httpx.Timeout(10.0, read=5.0)) as client:
        return client.get(url)


def assert_refused_or_served_whole(response: httpx.Response, cursor: str) -> None:
    """A bad cursor is refused (400 invalid_input) or ignored; a served stream runs whole."""
    assert response.status_code in (200, 400), f"{cursor!r}: {response.status_code}"
    assert_spec_answer(response.status_code, response.headers, response.content, repr(cursor))
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_input"
        return
    frames = [f for f in response.text.split("\n\n") if f.startswith("id: ")]
    assert frames, f"{cursor!r}: no frames: {response.text[:300]!r}"
    assert "event: status" in frames[-1] and '"succeeded"' in frames[-1], frames[-1]


@pytest.mark.parametrize("cursor", ["abc", "-", "0-", ">", "1-2-3", "18446744073709551616-0", "$"])
def test_a_resume_cursor_that_is_not_a_stream_id_never_breaks_the_stream(
    stack: Stack, finished_job: tuple[User, dict[str, Any]], cursor: str
) -> None:
    _, body = finished_job
    assert_refused_or_served_whole(read_stream_from(stack, body["events_url"], cursor), cursor)


def _before_now(cursor: str) -> bool:
    # A well-formed id after the job's last entry legitimately waits for more (heartbeats until
    # SSE_MAX_SECONDS); "$" means the same. Everything else must be answered at once.
    # ASCII digits only, as the server reads ids ("²".isdigit() is true, int("²") raises).
    millis = cursor.split("-")[0].strip()
    well_formed = millis.isascii() and millis.isdigit()
    return cursor.strip() != "$" and not (well_formed and int(millis) > 1_000_000_000)


@settings(FUZZ, report_multiple_bugs=False)
@given(
    cursor=st.one_of(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
        st.from_regex(r"\A\d{1,6}(-\d{1,6})?\Z"),
    ).filter(_before_now)
)
@example(cursor="abc")
def test_any_resume_cursor_on_a_finished_job_is_refused_or_served_whole(
    stack: Stack, finished_job: tuple[User, dict[str, Any]], cursor: str
) -> None:
    _, body = finished_job
    assert_refused_or_served_whole(read_stream_from(stack, body["events_url"], cursor), cursor)


NESTING_BUG = (
    "bug: json.loads raises RecursionError on deeply nested JSON (well under the 256 KiB "
    "limit); api/_common.json_body's get_json(silent=True) only absorbs ValueError, so the "
    "error reaches the catch-all handler: 500 internal"
)
NUL_BUG = (
    "bug: a U+0000 in any input string passes Producer.parse, then Postgres refuses it in "
    "cs_submit (psycopg UntranslatableCharacter: jsonb cannot hold \\u0000): 500 internal"
)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"kind":"job_match","input":' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    ],
    ids=["a deep array", "a deep object in the input"],
)
def test_a_deeply_nested_json_body_is_refused_as_invalid_input(
    stack: Stack, auth_headers: dict[str, str], body: bytes
) -> None:
    assert len(body) < 256 * 1024  # under the body limit: this is the parser's problem
    with httpx.Client(base_url=stack.producer_url, timeout=30, headers=auth_headers) as client:
        response = client.post(
            "/api/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    assert_spec_answer(response.status_code, response.headers, response.content, "nested")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("job_match", "input.resume_text"),
        ("job_match", "input.job_description"),
        ("resume_customize", "input.match.summary"),
    ],
)
def test_a_nul_character_in_the_input_is_refused_with_its_field_named(
    stack: Stack, kind: str, field: str
) -> None:
    user = User(stack.producer_url)
    job_input: dict[str, Any] = {"resume_text": "Jordan Lee", "job_description": "Engineer"}
    if field == "input.match.summary":
        job_input["match"] = {
            "score": 50,
            "strengths": [],
            "gaps": [],
            "missing_keywords": [],
            "summary": "ok\x00",
        }
    else:
        job_input[field.removeprefix("input.")] += "\x00 and more"
    with user.client() as client:
        response = client.post("/api/jobs", json={"kind": kind, "input": job_input})
    assert_spec_answer(response.status_code, response.headers, response.content, field)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["details"]
    assert user.me()["coins"] == 5 and user.get("/api/jobs").json()["jobs"] == []
