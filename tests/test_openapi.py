"""api/_openapi.json: a valid OpenAPI 3.1 document that matches what the producer really answers.

Real responses of a running stack (the way `make dev` starts it) are checked against the
document: the status code must be documented for that operation, the media type too, the body
must validate against its schema, and required headers (Retry-After on 429) must be present.
The docs page at /api/docs is served from the packaged Swagger UI assets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.stack import JD, RESUME, User, follow
from httpx_sse import connect_sse
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from lib.handlers import registry
from lib.models import EventType
from scripts.gen.openapi_kinds import updated
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
DOC: dict[str, Any] = json.loads((ROOT / "api" / "_openapi.json").read_text())
BASE_URI = "urn:careershaper:openapi"
REGISTRY: Registry = Registry().with_resource(
    BASE_URI, Resource.from_contents(DOC, default_specification=DRAFT202012)
)
SLOW = RESUME + " [[llm:slow=100]]"
# A good input of each kind that reads other texts than the two of job_match.
KIND_INPUTS: dict[str, dict[str, Any]] = {
    "resume_summary": {"resume_text": RESUME},
    "detailed_resume_summary": {"resume_text": RESUME},
    "job_summary": {"job_description": JD},
    "pre_match_audit": {"resume_text": RESUME, "job_description": JD},
}
ERROR_CODES = [
    "invalid_input",
    "unauthorized",
    "quota_exhausted",
    "not_found",
    "already_finished",
    "idempotency_conflict",
    "payload_too_large",
    "unsupported_media_type",
    "rate_limited",
    "user_concurrency",
    "backpressure",
    "unavailable",
]


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _lookup(pointer: str) -> Any:
    node: Any = DOC
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(pointer: str) -> tuple[str, Any]:
    node = _lookup(pointer)
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"]
        node = _lookup(pointer)
    return pointer, node


def validate(instance: Any, pointer: str) -> None:
    """Validate `instance` against the schema at `pointer` in the document (refs resolved)."""
    validator = Draft202012Validator(
        {"$ref": BASE_URI + pointer},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def conforms(path: str, method: str, response: httpx.Response) -> Any:
    """Assert that `response` is documented for the operation; returns its JSON body."""
    operation = f"#/paths/{_escape(path)}/{method}"
    documented = _lookup(operation)["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method.upper()} {path} answered {status}: {response.text}"
    pointer, spec = _deref(f"{operation}/responses/{status}")
    media = response.headers.get("content-type", "").split(";")[0].strip()
    assert media in spec.get("content", {}), f"{media} is not documented for {status}"
    for name, header in spec.get("headers", {}).items():
        header_pointer, header = _deref(f"{pointer}/headers/{_escape(name)}")
        if header.get("required"):
            assert name in response.headers, f"{status} lacks the {name} header"
        if name in response.headers:
            validate(response.headers[name], f"{header_pointer}/schema")
    if media != "application/json":
        return response.text
    body = response.json()
    validate(body, f"{pointer}/content/{_escape(media)}/schema")
    return body


def error_code(body: Any) -> str:
    return str(body["error"]["code"])


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack(
        "openapi",
        INITIAL_COINS="1",
        USER_MAX_ACTIVE_FREE="1",
        OFFLINE_LLM_TOKENS_PER_SECOND="2000",
    ) as running:
        yield running


@pytest.fixture
def user(stack: Stack) -> User:
    return User(stack.producer_url)


def stream_events(stack: Stack, events_url: str) -> list[Any]:
    """The whole stream, each event checked against the document's schema for its type."""
    stream = follow(stack.producer_url, events_url)
    schemas = _lookup(f"#/paths/{_escape('/api/jobs/{job_id}/events')}/get")["x-sse-events"]
    for event in stream:
        assert event.type in schemas, event.type
        validate(event.data, schemas[event.type]["$ref"])
    return stream


def test_the_document_is_a_valid_openapi_3_1_document() -> None:
    validate_spec(DOC)
    assert DOC["openapi"].startswith("3.1")
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert (schemes["streamToken"]["in"], schemes["streamToken"]["name"]) == ("query", "token")


def test_every_status_the_spec_lists_is_documented_with_its_error_codes() -> None:
    submit = _lookup("#/paths/~1api~1jobs/post")["responses"]
    assert {"200", "202", "400", "401", "402", "409", "413", "415", "429", "503"} <= set(submit)
    cancel = _lookup("#/paths/~1api~1jobs~1{job_id}~1cancel/post")["responses"]
    assert {"202", "404", "409"} <= set(cancel)
    _, too_many = _deref("#/components/responses/TooManyRequests")
    assert too_many["headers"]["Retry-After"]["$ref"].endswith("/RetryAfter")
    assert _lookup("#/components/headers/RetryAfter")["required"] is True
    codes = json.dumps(DOC["components"]["schemas"])
    for code in ERROR_CODES:
        assert f'"{code}"' in codes, code
    events = _lookup("#/paths/~1api~1jobs~1{job_id}~1events/get")
    assert "text/event-stream" in events["responses"]["200"]["content"]
    # Every event type, a pipeline's `step` and a waiting job's `queue` included.
    assert set(EventType) == set(events["x-sse-events"])
    assert {"step", "queue"} <= set(events["x-sse-events"])


def test_the_kinds_their_inputs_and_results_are_generated_from_the_handler_registry() -> None:
    assert updated(DOC) == DOC, (
        "api/_openapi.json is stale: run python -m scripts.gen.openapi_kinds"
    )
    assert _lookup("#/components/schemas/Kind")["enum"] == sorted(registry())
    mapping = _lookup("#/components/schemas/SubmitRequest")["discriminator"]["mapping"]
    assert set(mapping) == set(registry())
    examples = _lookup("#/paths/~1api~1jobs/post/requestBody/content/application~1json/examples")
    for example in examples.values():
        validate(example["value"], "#/components/schemas/SubmitRequest")
        kind = registry()[example["value"]["kind"]]
        kind.input_model.model_validate(example["value"]["input"])


@pytest.mark.parametrize("kind", sorted(KIND_INPUTS))
def test_the_documents_input_schema_agrees_with_the_kinds_input_model(kind: str) -> None:
    good = {"kind": kind, "input": KIND_INPUTS[kind]}
    registry()[kind].input_model.model_validate(good["input"])
    validate(good, "#/components/schemas/SubmitRequest")
    for name in good["input"]:
        too_long = {**good["input"], name: "x" * 20_001}
        with pytest.raises(AssertionError):
            validate({**good, "input": too_long}, "#/components/schemas/SubmitRequest")
    with pytest.raises(AssertionError):
        validate(
            {**good, "input": {**good["input"], "extra": "x"}}, "#/components/schemas/SubmitRequest"
        )


@pytest.mark.parametrize("kind", ["job_match", "resume_customize", "interview_prep"])
def test_a_job_of_each_kind_and_its_events_match_the_document(
    stack: Stack, user: User, kind: str
) -> None:
    body = conforms("/api/jobs", "post", user.submit(kind))
    job_id = body["job"]["id"]
    stream = stream_events(stack, body["events_url"])
    assert stream[-1].data["status"] == "succeeded"
    final = conforms("/api/jobs/{job_id}", "get", user.get(f"/api/jobs/{job_id}"))
    assert final["job"]["status"] == "succeeded" and final["job"]["result"]
    page = conforms("/api/jobs", "get", user.get("/api/jobs?limit=1"))
    assert page["jobs"][0]["id"] == job_id and page["next_before"] == job_id
    conforms("/api/me", "get", user.get("/api/me"))


def test_the_user_stream_and_its_errors_match_the_document(stack: Stack, user: User) -> None:
    me = conforms("/api/me", "get", user.get("/api/me"))
    schemas = _lookup(f"#/paths/{_escape('/api/events')}/get")["x-sse-events"]
    with (
        httpx.Client(base_url=stack.producer_url, timeout=60) as client,
        connect_sse(client, "GET", me["events_url"]) as source,
    ):
        body = conforms("/api/jobs", "post", user.submit("job_match"))  # while it is open
        job_id = body["job"]["id"]
        for sse in source.iter_sse():
            if not sse.data:
                continue
            validate(sse.id, "#/components/schemas/UserEventId")
            data = json.loads(sse.data)
            validate(data, schemas[sse.event]["$ref"])
            assert data["job_id"] == job_id
            if sse.event == "status" and data["status"] == "succeeded":
                break
    bad = httpx.get(f"{stack.producer_url}{me['events_url']}&last_event_id=1-0~nope")
    assert error_code(conforms("/api/events", "get", bad)) == "invalid_input"
    job_token = httpx.get(f"{stack.producer_url}/api/events?token={body['stream_token']}")
    assert error_code(conforms("/api/events", "get", job_token)) == "unauthorized"


def test_an_idempotent_replay_and_a_conflicting_body_match_the_document(user: User) -> None:
    first = user.submit("job_match", key="same-key")
    conforms("/api/jobs", "post", first)
    replay = user.submit("job_match", key="same-key")
    assert replay.status_code == 200
    assert conforms("/api/jobs", "post", replay)["job"]["id"] == first.json()["job"]["id"]
    conflict = user.submit("job_match", key="same-key", resume=RESUME + " (edited)")
    assert error_code(conforms("/api/jobs", "post", conflict)) == "idempotency_conflict"


def test_quota_concurrency_and_cancel_errors_match_the_document(stack: Stack, user: User) -> None:
    refused = user.submit("resume_customize", tier="paid")  # costs 2; the user has 1 coin
    assert error_code(conforms("/api/jobs", "post", refused)) == "quota_exhausted"
    running = conforms("/api/jobs", "post", user.submit("job_match", resume=SLOW, tier="free"))
    busy = user.submit("job_match", resume=SLOW, tier="free")
    assert busy.status_code == 429
    assert error_code(conforms("/api/jobs", "post", busy)) == "user_concurrency"
    job_id = running["job"]["id"]
    cancelled = conforms(
        "/api/jobs/{job_id}/cancel", "post", user.post(f"/api/jobs/{job_id}/cancel")
    )
    assert cancelled["job"]["status"] == "cancelled"
    again = user.post(f"/api/jobs/{job_id}/cancel")
    body = conforms("/api/jobs/{job_id}/cancel", "post", again)
    assert error_code(body) == "already_finished" and body["error"]["details"]["status"]
    assert stream_events(stack, running["events_url"])[-1].data["status"] == "cancelled"


def test_request_errors_match_the_document(stack: Stack, user: User) -> None:
    base = stack.producer_url
    with user.client() as client:
        bad = client.post("/api/jobs", json={"kind": "job_match", "input": {"resume_text": "x"}})
        assert error_code(conforms("/api/jobs", "post", bad)) == "invalid_input"
        assert "input.job_description" in bad.json()["error"]["details"]
        malformed = client.post(
            "/api/jobs", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert error_code(conforms("/api/jobs", "post", malformed)) == "invalid_input"
        assert error_code(conforms("/api/jobs", "get", client.get("/api/jobs?limit=0"))) == (
            "invalid_input"
        )
        wrong_type = client.post("/api/jobs", content=b"kind=job_match")
        assert error_code(conforms("/api/jobs", "post", wrong_type)) == "unsupported_media_type"
        huge = {"kind": "job_match", "input": {"resume_text": "x" * 300_000, "job_description": JD}}
        too_large = client.post("/api/jobs", json=huge)
        assert error_code(conforms("/api/jobs", "post", too_large)) == "payload_too_large"
        unknown = str(uuid.uuid4())
        for path, method, url in [
            ("/api/jobs/{job_id}", "get", f"/api/jobs/{unknown}"),
            ("/api/jobs/{job_id}/cancel", "post", f"/api/jobs/{unknown}/cancel"),
            ("/api/jobs/{job_id}/events", "get", f"/api/jobs/{unknown}/events"),
        ]:
            answer = client.request(method.upper(), url)
            assert error_code(conforms(path, method, answer)) == "not_found"
    anonymous = [
        ("/api/jobs", "post", httpx.post(f"{base}/api/jobs", json={})),
        ("/api/jobs", "get", httpx.get(f"{base}/api/jobs")),
        ("/api/me", "get", httpx.get(f"{base}/api/me")),
        ("/api/jobs/{job_id}/events", "get", httpx.get(f"{base}/api/jobs/{unknown}/events")),
        (
            "/api/jobs/{job_id}/events",
            "get",
            httpx.get(f"{base}/api/jobs/{unknown}/events?token=forged"),
        ),
    ]
    for path, method, answer in anonymous:
        assert error_code(conforms(path, method, answer)) == "unauthorized"


def test_health_matches_the_document(stack: Stack) -> None:
    shallow = conforms("/api/health", "get", httpx.get(f"{stack.producer_url}/api/health"))
    assert shallow == {"ok": True}
    deep = conforms("/api/health", "get", httpx.get(f"{stack.producer_url}/api/health?deep=1"))
    assert deep["ok"] and set(deep["checks"]) == {"redis", "db", "storage"}


def test_the_producer_serves_this_document_at_api_openapi_json(stack: Stack) -> None:
    response = httpx.get(f"{stack.producer_url}/api/openapi.json")
    conforms("/api/openapi.json", "get", response)
    assert response.json() == DOC


def test_the_docs_page_loads_swagger_ui_from_the_package_not_a_cdn(stack: Stack) -> None:
    page = httpx.get(f"{stack.producer_url}/api/docs")
    conforms("/api/docs", "get", page)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/api/docs/") for s in sources), sources
    assert "/api/docs/swagger-ui-bundle.js" in sources and "/api/docs/swagger-ui.css" in sources
    for source in sources:
        asset = httpx.get(stack.producer_url + source)
        assert asset.status_code == 200, source
        if source.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]
    bundle = httpx.get(f"{stack.producer_url}/api/docs/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text and len(bundle.content) > 100_000
    init = httpx.get(f"{stack.producer_url}/api/docs/init.js")
    assert '"/api/openapi.json"' in init.text
    not_an_asset = httpx.get(f"{stack.producer_url}/api/docs/LICENSE")
    assert error_code(not_an_asset.json()) == "not_found"


def test_a_submit_while_the_broker_is_down_matches_the_document(stack: Stack, user: User) -> None:
    broker = stack.component("broker")
    assert broker.proc is not None
    os.killpg(broker.proc.pid, signal.SIGTERM)
    broker.proc.wait(10)
    try:
        down = user.submit("job_match")
        assert error_code(conforms("/api/jobs", "post", down)) == "unavailable"
        assert user.me()["coins"] == 1 and user.me()["active_jobs"] == 0
    finally:
        stack.restart("broker")
    assert user.submit("job_match").status_code == 202
