"""Property tests: submit validation against any JSON value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lib import config, handlers
from lib.errors import InputError
from lib.handlers.base import no_images
from lib.models import MAX_JOB_DESCRIPTION_CHARS, MAX_RESUME_CHARS, SubmitRequest
from lib.service import Producer

KINDS = sorted(handlers.registry())
# The texts a kind may read; each kind reads one or both.
TEXTS = {"resume_text", "job_description"}
TOP_FIELDS = {"body", *SubmitRequest.model_fields}


# Submit validation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def producer() -> Producer:
    # parse() is the I/O-free first step of submit: with no store, state, broker or verifier
    # behind it, any attempt at I/O would fail the property below with an AttributeError.
    return Producer(config.load("any"), None, None, None, None)  # type: ignore[arg-type]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # Python's json (so Flask's) also accepts NaN and Infinity
    | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
TEXT_NEAR_LIMITS = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda n, ch: ch * n,
        st.sampled_from([0, 1, MAX_JOB_DESCRIPTION_CHARS, MAX_JOB_DESCRIPTION_CHARS + 1])
        | st.sampled_from([MAX_RESUME_CHARS, MAX_RESUME_CHARS + 1]),
        st.sampled_from(["a", " ", "\u00e9", "\u4e2d", "\U0001f600"]),
    ),
)
MATCH = st.fixed_dictionaries(
    {},
    optional={
        "score": st.integers(-5, 105) | JSON,
        "strengths": st.lists(st.text(max_size=10), max_size=3) | JSON,
        "gaps": st.lists(st.text(max_size=10), max_size=3),
        "missing_keywords": st.lists(st.text(max_size=10), max_size=3),
        "summary": st.text(max_size=20) | JSON,
    },
)
INPUT = st.fixed_dictionaries(
    {},
    optional={
        "resume_text": TEXT_NEAR_LIMITS | JSON,
        "job_description": TEXT_NEAR_LIMITS | JSON,
        "match": MATCH | JSON,
        "extra": JSON,
    },
)
NEAR_VALID_BODY = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from([*KINDS, "", "JOB_MATCH", "nope"]) | JSON,
        "input": INPUT | JSON,
        "tier": st.sampled_from(["auto", "paid", "free", "gold", ""]) | JSON,
        "extra": JSON,
    },
)


def _names_a_field(key: str, body: Any) -> bool:
    top = key.split(".")[0]
    sent = body if isinstance(body, dict) else {}
    return top in TOP_FIELDS or any(key == k or key.startswith(f"{k}.") for k in sent)


@settings(max_examples=200, deadline=None, database=None)
@given(body=JSON | NEAR_VALID_BODY)
def test_any_json_body_is_either_parsed_or_refused_with_per_field_details(
    producer: Producer, body: Any
) -> None:
    try:
        request, normalised, cost = producer.parse(body)
    except InputError as error:
        assert (error.status, error.code) == (400, "invalid_input")
        assert isinstance(error.details, dict) and error.details, error.details
        for key, message in error.details.items():
            assert isinstance(key, str) and isinstance(message, str) and message
            assert _names_a_field(key, body), (key, body)
        json.dumps(error.details, allow_nan=False)  # the 400 body is always serialisable
        return
    assert isinstance(body, dict) and request.kind in KINDS
    assert cost == producer.settings.cost(request.kind, handlers.registry()[request.kind].cost)
    assert request.tier == body.get("tier", "auto")
    texts = TEXTS & set(handlers.registry()[request.kind].input_model.model_fields)
    for name in texts:  # each text the kind reads is required
        assert_trimmed(normalised[name], body["input"][name])
    assert len(normalised.get("resume_text", "")) <= MAX_RESUME_CHARS
    assert len(normalised.get("job_description", "")) <= MAX_JOB_DESCRIPTION_CHARS
    json.dumps(normalised, allow_nan=False)  # what is stored and hashed is plain JSON


def assert_trimmed(stored: str, sent: str) -> None:
    """`stored` is `sent` less surrounding whitespace (pydantic's notion of it, which keeps a few
    ASCII separators Python's str.strip drops) and is never empty."""
    assert stored and stored in sent and stored.strip() == sent.strip(), (stored, sent)


# Postgres text cannot hold U+0000, so parse refuses it (tested on its own below).
VALID_TEXT = st.text(min_size=1, max_size=200).filter(lambda t: t.strip() and "\x00" not in t)


@settings(max_examples=60, deadline=None, database=None)
@given(
    # The kinds that read an upload, not text only (tests/test_images.py, test_pipeline.py).
    kind=st.sampled_from([k for k in KINDS if handlers.registry()[k].images is no_images]),
    tier=st.sampled_from(["auto", "paid", "free", None]),
    resume=VALID_TEXT,
    description=VALID_TEXT,
)
def test_every_well_formed_submit_is_accepted_with_its_kinds_cost(
    producer: Producer, kind: str, tier: str | None, resume: str, description: str
) -> None:
    texts = TEXTS & set(handlers.registry()[kind].input_model.model_fields)
    sent = {"resume_text": resume, "job_description": description}
    body: dict[str, Any] = {"kind": kind, "input": {name: sent[name] for name in texts}}
    if tier is not None:
        body["tier"] = tier
    request, normalised, cost = producer.parse(body)
    assert (request.kind, request.tier) == (kind, tier or "auto")
    assert {name for name, value in normalised.items() if value is not None} == texts
    for name in texts:
        assert_trimmed(normalised[name], sent[name])
    assert cost == producer.settings.cost(kind, handlers.registry()[kind].cost) > 0


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


@settings(max_examples=60, deadline=None, database=None, report_multiple_bugs=False)
@given(body=NEAR_VALID_BODY)
@example(body={"kind": "job_match", "input": {"resume_text": "a\x00", "job_description": "b"}})
def test_parse_accepts_only_what_postgres_can_store(producer: Producer, body: Any) -> None:
    try:
        _, normalised, _ = producer.parse(body)
    except InputError:
        return
    assert not [s for s in strings_in(normalised) if "\x00" in s], normalised
