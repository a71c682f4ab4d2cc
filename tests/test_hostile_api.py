"""Attacks on the running producer's HTTP surface (issue 11, items 3, 4, 6 and 10).

Most tests drive a stack started the way `make dev` starts it (gunicorn producer, worker, dev
broker, offline LLM, real Redis and Postgres) over HTTP only, as an attacker would; the rest
call the producer's I/O-free submit parser, or the Redis state, directly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from helpers.backends import open_streams
from helpers.net import wait_for
from helpers.stack import JD, RESUME, User, follow

import api
from lib import config
from lib.config import DEV_JWT_SECRET
from lib.errors import InputError, RateLimitError
from lib.events import HeldStream
from lib.models import (
    MAX_JOB_DESCRIPTION_CHARS,
    MAX_MATCH_ITEM_CHARS,
    MAX_MATCH_LIST_ITEMS,
    MAX_MATCH_SUMMARY_CHARS,
    MAX_RESUME_CHARS,
)
from lib.service import Producer
from lib.state import State
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

MAX_STREAMS = 2
SLOW = RESUME + " [[llm:slow=200]]"


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
SECURITY_HEADERS_CSP = "frame-ancestors 'none'"


@pytest.mark.parametrize("path", ["/", "/index.html", "/api/health", "/api/me", "/api/nope"])
def test_no_page_or_answer_can_be_framed_or_sniffed(stack: Stack, path: str) -> None:
    response = httpx.get(stack.producer_url + path, timeout=10)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name, dict(response.headers))
    assert response.headers.get("content-security-policy") == SECURITY_HEADERS_CSP, path


def test_vercel_sends_the_same_security_headers_on_every_path() -> None:
    config = json.loads((Path(api.__file__).parents[1] / "vercel.json").read_text())
    every_path = [rule for rule in config.get("headers", []) if rule["source"] == "/(.*)"]
    assert every_path, config.get("headers")
    sent = {h["key"].lower(): h["value"] for h in every_path[0]["headers"]}
    assert {k: sent.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS
    assert sent["content-security-policy"] == SECURITY_HEADERS_CSP


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


# 4. Input bounds -----------------------------------------------------------------------------
def match(**fields: Any) -> dict[str, Any]:
    """A job_match result, as a client sends it back as `match`."""
    return {
        "score": 72,
        "strengths": ["Python"],
        "gaps": ["Kubernetes"],
        "missing_keywords": ["k8s"],
        "summary": "A good fit.",
        **fields,
    }


@pytest.mark.parametrize("kind", ["resume_customize", "interview_prep"])
def test_a_200_kb_match_is_refused_and_charges_nothing(stack: Stack, kind: str) -> None:
    user = User(stack.producer_url)
    huge = match(strengths=["x" * 1000] * 200)  # 200 KB
    response = user.submit(kind, match=huge)
    error = assert_error(response, 400, "invalid_input")
    assert any(field.startswith("input.match.strengths") for field in error["details"]), error
    assert user.me()["coins"] == 5
    assert user.get("/api/jobs").json()["jobs"] == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"summary": "s" * (MAX_MATCH_SUMMARY_CHARS + 1)}, "input.match.summary"),
        ({"gaps": ["g"] * (MAX_MATCH_LIST_ITEMS + 1)}, "input.match.gaps"),
        ({"gaps": ["g" * (MAX_MATCH_ITEM_CHARS + 1)]}, "input.match.gaps.0"),
        ({"notes": "an extra field"}, "input.match.notes"),
        ({"score": "72"}, "input.match.score"),
        ({"strengths": "not a list"}, "input.match.strengths"),
    ],
)
def test_every_field_of_match_is_bounded_and_strict(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError) as refused:
        parser().parse(
            {
                "kind": "interview_prep",
                "input": {"resume_text": RESUME, "job_description": JD, "match": match(**bad)},
            }
        )
    assert field in refused.value.details, refused.value.details


@pytest.mark.parametrize("kind", ["resume_customize", "interview_prep"])
def test_fields_within_their_bounds_still_cannot_add_up_past_the_kinds_prompt_bound(
    kind: str,
) -> None:
    fitting = match(strengths=["s" * 400] * 10)  # about 4,000 characters: within its bound
    longest = {
        "resume_text": "r" * MAX_RESUME_CHARS,
        "job_description": "j" * MAX_JOB_DESCRIPTION_CHARS,
        "match": fitting,
    }
    with pytest.raises(InputError) as refused:
        parser().parse({"kind": kind, "input": longest})
    details = refused.value.details
    assert "at most" in details["input"], details
    assert {"input.resume_text", "input.job_description", "input.match"} <= set(details)
    # The same match with ordinary texts, or the longest texts with an ordinary match, pass.
    ordinary = {"resume_text": RESUME, "job_description": JD, "match": fitting}
    assert parser().parse({"kind": kind, "input": ordinary})[2] == 2
    assert parser().parse({"kind": kind, "input": {**longest, "match": match()}})[2] == 2


def test_a_match_over_its_rendered_bound_is_refused_even_with_every_item_in_bounds() -> None:
    wide = match(**{name: ["x" * 400] * 20 for name in ("strengths", "gaps")})
    with pytest.raises(InputError) as refused:
        parser().parse(
            {
                "kind": "resume_customize",
                "input": {"resume_text": RESUME, "job_description": JD, "match": wide},
            }
        )
    assert "at most" in refused.value.details["input.match"], refused.value.details


def parser() -> Producer:
    """The producer's submit parser alone (it does no I/O)."""
    return Producer(config.load("any"), None, None, None, None)  # type: ignore[arg-type]


# 3. Event streams per user -------------------------------------------------------------------
def open_stream(client: httpx.Client, events_url: str, stack: ExitStack) -> httpx.Response:
    """Open an event stream and keep it open (until `stack` closes); returns its response."""
    return stack.enter_context(client.stream("GET", events_url))


def test_a_user_cannot_hold_more_event_streams_than_the_limit_and_others_are_unaffected(
    stack: Stack,
) -> None:
    alice, bob = User(stack.producer_url), User(stack.producer_url)
    running = alice.submit("job_match", resume=SLOW).json()
    url = running["events_url"]
    with ExitStack() as held, httpx.Client(base_url=stack.producer_url, timeout=30) as client:
        for _ in range(MAX_STREAMS):
            assert open_stream(client, url, held).status_code == 200
        refused = client.get(url)
        error = assert_error(refused, 429, "stream_limit")
        assert int(refused.headers["Retry-After"]) == error["details"]["next_slot_s"] >= 1
        assert error["details"]["limit"] == MAX_STREAMS and error["details"]["open"] == MAX_STREAMS
        assert (
            error["details"]["reason"]
            == f"{MAX_STREAMS} event streams are open, the limit is {MAX_STREAMS}"
        )
        # The bearer header counts as the same user; another user streams as usual.
        with alice.client() as as_alice:
            bearer_url = f"/api/jobs/{running['job']['id']}/events"
            assert_error(as_alice.get(bearer_url), 429, "stream_limit")
        own = bob.submit("job_match").json()
        with ExitStack() as bobs:
            assert open_stream(client, own["events_url"], bobs).status_code == 200
    # The held streams were closed by their client: the server frees their slots.
    with ExitStack() as again, httpx.Client(base_url=stack.producer_url, timeout=30) as client:

        def reopened() -> bool:
            return open_stream(client, url, again).status_code == 200

        for _ in range(MAX_STREAMS):
            wait_for(reopened, timeout=20, interval=0.2, what="a freed stream slot")
    assert alice.post(f"/api/jobs/{running['job']['id']}/cancel").status_code == 202


def test_a_stream_that_ends_frees_its_slot(stack: Stack) -> None:
    user = User(stack.producer_url)
    done = user.submit("job_match").json()
    for _ in range(MAX_STREAMS + 2):  # each read to its terminal event, one after the other
        assert follow(stack.producer_url, done["events_url"])[-1].data["status"] == "succeeded"


@pytest.fixture
def slots(redis_backend: Any, redis_prefix: str) -> State:
    """The stream slots on each Redis adapter, with a short slot TTL."""
    return State(redis_backend, prefix=redis_prefix, stream_slot_ttl=0.5)


def test_a_stream_whose_holder_died_frees_its_slot_after_the_ttl(slots: State) -> None:
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    slots.hold_stream(user, "alive", 2)
    slots.hold_stream(user, "died", 2)  # never refreshed, never dropped: its function died
    with pytest.raises(RateLimitError) as refused:
        slots.hold_stream(user, "third", 2)
    assert refused.value.code == "stream_limit" and refused.value.retry_after == 1
    slots.hold_stream(other, "theirs", 2)  # another user is unaffected

    def admitted() -> bool:
        slots.hold_stream(user, "alive", 2, refresh=True)  # the live stream's heartbeat
        try:
            slots.hold_stream(user, "third", 2)
        except RateLimitError:
            return False
        return True

    wait_for(admitted, timeout=5, interval=0.1, what="the dead stream's slot to lapse")
    assert open_streams(slots, user) == 2  # "alive" (refreshed) and "third"
    slots.drop_stream(user, "third")
    assert open_streams(slots, user) == 1
    ttl = slots.backend.command("PTTL", slots.keys.streams(user))
    assert 0 < int(ttl) <= slots.stream_life_ms  # the key itself expires too (a stream's life)


# 6. Anonymous users --------------------------------------------------------------------------
def supabase_token(user_id: str, **claims: Any) -> str:
    """An access token with the claims Supabase Auth puts in one (HS256, the dev secret).

    An anonymous sign-in (`signInAnonymously()`) gets role `authenticated` like a permanent
    user, and `is_anonymous: true` (supabase.com/docs/guides/auth/auth-anonymous), with
    `amr` method "anonymous"; a permanent user has `is_anonymous: false`.
    """
    now = int(time.time())
    body = {
        "iss": "http://127.0.0.1:54321/auth/v1",
        "aud": "authenticated",
        "sub": user_id,
        "exp": now + 3600,
        "iat": now,
        "email": "",
        "phone": "",
        "app_metadata": {},
        "user_metadata": {},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "anonymous", "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": True,
        **claims,
    }
    return jwt.encode(body, DEV_JWT_SECRET, algorithm="HS256")


def as_token(stack: Stack, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.producer_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    )


def balance_rows(database_url: str, user_id: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select (select count(*) from cs_balances where user_id = %s)"
            " + (select count(*) from cs_ledger where user_id = %s)",
            (user_id, user_id),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    "claims",
    [
        {},  # an anonymous sign-in
        {"is_anonymous": False, "role": "anon"},  # a role other than authenticated
        {"is_anonymous": False, "role": "service_role"},
    ],
)
def test_anonymous_users_get_no_coins_and_no_free_jobs(
    stack: Stack, database_url: str, claims: dict[str, Any]
) -> None:
    user_id = str(uuid.uuid4())
    body = {"kind": "job_match", "input": {"resume_text": RESUME, "job_description": JD}}
    with as_token(stack, supabase_token(user_id, **claims)) as client:
        me = client.get("/api/me").json()
        assert (me["coins"], me["free_jobs_left_today"]) == (0, 0), me
        for tier in ("auto", "paid", "free"):
            refused = client.post("/api/jobs", json={**body, "tier": tier})
            error = assert_error(refused, 402, "quota_exhausted")
            assert error["details"] == {"coins": 0, "free_jobs_left_today": 0}
        assert client.get("/api/jobs").json()["jobs"] == []
    assert balance_rows(database_url, user_id) == 0  # no grant was written: nothing to farm
    # The same user after linking an identity (a permanent user) gets the grant, once.
    permanent = supabase_token(user_id, is_anonymous=False, amr=[{"method": "password"}])
    with as_token(stack, permanent) as client:
        assert client.get("/api/me").json()["coins"] == 5
        assert client.post("/api/jobs", json=body).status_code == 202
        assert client.get("/api/me").json()["coins"] == 4


def test_the_api_document_describes_the_stream_limit_and_the_bounded_match() -> None:
    document = json.loads((Path(api.__file__).parent / "_openapi.json").read_text())
    events = document["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]
    assert events["429"]["$ref"] == "#/components/responses/TooManyRequests"
    schemas = document["components"]["schemas"]
    error = schemas["TooManyRequestsError"]["allOf"][1]["properties"]["error"]["properties"]
    assert "stream_limit" in error["code"]["enum"]
    match_input = schemas["MatchInput"]
    for kind_input in ("CustomizeInput", "PrepInput"):  # the kinds that take a match
        options = schemas[kind_input]["properties"]["match"]["anyOf"]
        assert {"$ref": "#/components/schemas/MatchInput"} in options
    assert match_input["additionalProperties"] is False
    assert match_input["properties"]["summary"]["maxLength"] == MAX_MATCH_SUMMARY_CHARS
    for name in ("strengths", "gaps", "missing_keywords"):
        assert match_input["properties"][name]["maxItems"] == MAX_MATCH_LIST_ITEMS
        assert match_input["properties"][name]["items"]["maxLength"] == MAX_MATCH_ITEM_CHARS


def test_an_open_stream_keeps_its_slot_past_the_ttl_and_frees_it_when_closed(
    slots: State,
) -> None:
    slots.stream_slot_ttl_ms = 1000  # refreshed at least every 1/3 s plus one frame's wait
    user, closed = str(uuid.uuid4()), []

    def frames() -> Iterator[str]:
        try:
            for _ in range(12):  # 2.4 s of a live stream: heartbeats every 0.2 s
                time.sleep(0.2)
                yield ": keep-alive\n\n"
        finally:
            closed.append(True)

    held = HeldStream(slots, user, "live", frames(), limit=1)
    slots.hold_stream(user, "live", 1)
    for _ in range(12):
        next(held)
        assert open_streams(slots, user) == 1
    with pytest.raises(RateLimitError):
        slots.hold_stream(user, "another", 1)
    second = HeldStream(slots, user, "second", frames(), limit=1)
    held.close()
    assert closed == [True] and open_streams(slots, user) == 0
    slots.hold_stream(user, "second", 1)
    with pytest.raises(StopIteration):
        for _ in range(13):
            next(second)
    assert open_streams(slots, user) == 0  # the end of a stream frees its slot too
