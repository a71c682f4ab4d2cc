"""The kinds that read other inputs than job_match's two texts: resume_summary,
detailed_resume_summary, job_summary and pre_match_audit.

Submitted through the real producer (real Redis, Postgres and dev broker) and run through the
real worker app, its executor and the offline LLM, as tests/test_service.py and
tests/test_worker.py do for the first three kinds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from werkzeug.test import TestResponse

from lib import config, state, store
from lib.auth import from_settings as verifier_from_settings
from lib.errors import InputError
from lib.handlers import registry
from lib.handlers.base import detect_language
from lib.models import MAX_JOB_DESCRIPTION_CHARS, MAX_RESUME_CHARS
from lib.queue.producer import QStashPublisher
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
from lib.queue.wire import message_body
from lib.service import Producer, Submitted

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv

RESUME = {
    "en": "Jordan Lee, backend engineer since 2018. Python, Flask, PostgreSQL, Redis, AWS. "
    "Built a settlement service handling 2M transactions a day.",
    "zh": "李明，后端工程师，2018 年起从事 Python 开发，熟悉 Flask、PostgreSQL 和 Redis，"
    "负责过日处理两百万笔交易的结算服务。",
}
JD = {
    "en": "Senior Python engineer at Acme: build queues, workers and streaming APIs. Must have "
    "Postgres and Redis; Kubernetes is a plus.",
    "zh": "Acme 招聘高级 Python 工程师：负责任务队列、后台服务和实时推送接口。必须熟悉 Postgres "
    "和 Redis，熟悉 Kubernetes 者优先。",
}
JOB_SUMMARY = {
    "title": "Senior Python engineer",
    "company": "Acme",
    "seniority": "senior",
    "summary": "Builds the job platform's queues and workers.",
    "responsibilities": ["Build queues"],
    "must_have": ["Postgres", "Redis"],
    "nice_to_have": ["Kubernetes"],
    "keywords": ["Python", "SSE"],
}
NEW_KINDS = ["resume_summary", "detailed_resume_summary", "job_summary", "pre_match_audit"]
COSTS = {"resume_summary": 1, "detailed_resume_summary": 2, "job_summary": 1, "pre_match_audit": 1}


def good_input(kind: str, lang: str = "en") -> dict[str, Any]:
    """A valid input of `kind` in `lang`."""
    if kind in ("resume_summary", "detailed_resume_summary"):
        return {"resume_text": RESUME[lang]}
    if kind == "job_summary":
        return {"job_description": JD[lang]}
    return {"resume_text": RESUME[lang], "job_description": JD[lang]}


def audit(**job_summary: Any) -> dict[str, Any]:
    """A pre_match_audit input whose `job_summary` has these fields changed."""
    return {**good_input("pre_match_audit"), "job_summary": {**JOB_SUMMARY, **job_summary}}


# (kind, input, the field `details` must name)
INVALID: dict[str, tuple[str, dict[str, Any], str]] = {
    "a resume summary without a resume": ("resume_summary", {}, "input.resume_text"),
    "a resume summary of whitespace": (
        "resume_summary",
        {"resume_text": "  "},
        "input.resume_text",
    ),
    "a resume summary of a resume over the limit": (
        "resume_summary",
        {"resume_text": "r" * (MAX_RESUME_CHARS + 1)},
        "input.resume_text",
    ),
    "a resume summary given a job description too": (
        "resume_summary",
        {**good_input("resume_summary"), "job_description": JD["en"]},
        "input.job_description",
    ),
    "a resume summary of a number": ("resume_summary", {"resume_text": 42}, "input.resume_text"),
    "a detailed summary of a resume over the limit": (
        "detailed_resume_summary",
        {"resume_text": "r" * (MAX_RESUME_CHARS + 1)},
        "input.resume_text",
    ),
    "a detailed summary with an unknown field": (
        "detailed_resume_summary",
        {**good_input("detailed_resume_summary"), "depth": "full"},
        "input.depth",
    ),
    "a job summary without a job description": ("job_summary", {}, "input.job_description"),
    "a job summary of a description over the limit": (
        "job_summary",
        {"job_description": "d" * (MAX_JOB_DESCRIPTION_CHARS + 1)},
        "input.job_description",
    ),
    "a job summary given a resume too": (
        "job_summary",
        {**good_input("job_summary"), "resume_text": RESUME["en"]},
        "input.resume_text",
    ),
    "an audit without a job description": (
        "pre_match_audit",
        {"resume_text": RESUME["en"]},
        "input.job_description",
    ),
    "an audit of a resume over the limit": (
        "pre_match_audit",
        {**good_input("pre_match_audit"), "resume_text": "r" * (MAX_RESUME_CHARS + 1)},
        "input.resume_text",
    ),
    "an audit whose job summary has an unknown field": (
        "pre_match_audit",
        audit(salary="lots"),
        "input.job_summary.salary",
    ),
    "an audit whose job summary lacks a field": (
        "pre_match_audit",
        {**good_input("pre_match_audit"), "job_summary": {"title": "Engineer"}},
        "input.job_summary.seniority",
    ),
    "an audit whose job summary has an unknown seniority": (
        "pre_match_audit",
        audit(seniority="wizard"),
        "input.job_summary.seniority",
    ),
    "an audit whose job summary title is a number": (
        "pre_match_audit",
        audit(title=7),
        "input.job_summary.title",
    ),
    "an audit whose job summary title is too long": (
        "pre_match_audit",
        audit(title="t" * 201),
        "input.job_summary.title",
    ),
    "an audit whose job summary summary is too long": (
        "pre_match_audit",
        audit(summary="s" * 2001),
        "input.job_summary.summary",
    ),
    "an audit whose job summary has too many keywords": (
        "pre_match_audit",
        audit(keywords=["k"] * 31),
        "input.job_summary.keywords",
    ),
    "an audit whose job summary has a keyword too long": (
        "pre_match_audit",
        audit(must_have=["m" * 501]),
        "input.job_summary.must_have.0",
    ),
    "an audit whose job summary is too large as a whole": (
        "pre_match_audit",
        audit(**{name: ["x" * 490] * 4 for name in ("responsibilities", "must_have", "keywords")}),
        "input.job_summary",
    ),
    "an audit whose texts and job summary overflow one prompt": (
        "pre_match_audit",
        {
            "resume_text": "r" * MAX_RESUME_CHARS,
            "job_description": "d" * MAX_JOB_DESCRIPTION_CHARS,
            "job_summary": {**JOB_SUMMARY, "summary": "s" * 2000, "keywords": ["k" * 500] * 4},
        },
        "input",
    ),
}


@pytest.fixture
def producer(base_settings: dict[str, Any], dev_broker: str) -> Iterator[Producer]:
    settings = config.load("api", **{**base_settings, "qstash_url": dev_broker})
    built = Producer(
        settings,
        store.from_settings(settings, pool_size=2),
        state.from_settings(settings),
        QStashPublisher(settings, timeout=3.0),
        verifier_from_settings(settings),
    )
    yield built
    built.store.close()
    built.state.close()


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


def new_user() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_a_good_input_of_each_new_kind_is_accepted_and_charged_its_cost(
    producer: Producer, db: Db, kind: str
) -> None:
    user = new_user()

    submitted = submit(producer, user, kind, good_input(kind))

    assert submitted.created and submitted.job.cost == COSTS[kind] == registry()[kind].cost
    assert db.ledger(submitted.job.id) == [("debit", -COSTS[kind])]
    assert db.coins(user) == 5 - COSTS[kind]


def test_an_audit_with_a_job_summary_is_accepted() -> None:
    handler = registry()["pre_match_audit"]
    job_input = handler.input_model.model_validate(audit())
    assert json.loads(handler.fields(job_input)["job_summary"]) == JOB_SUMMARY


def test_an_audit_of_a_job_summary_with_null_fields_runs_to_a_result(
    producer: Producer, make_worker: Callable[..., WorkerEnv], db: Db
) -> None:
    # A job_summary result may say `company: null`; the stored input must validate again in
    # the worker (it was dumped without its nulls, and the worker refused it as invalid).
    env, user = make_worker(), new_user()
    job_input = {**good_input("pre_match_audit"), "job_summary": {**JOB_SUMMARY, "company": None}}
    submitted = submit(producer, user, "pre_match_audit", job_input)

    assert deliver(env, submitted, user).status_code == 200
    row = db.job(submitted.job.id)
    assert row["status"] == "succeeded", row["error"]
    stored = db.one("select input from cs_jobs where id = %s", submitted.job.id)
    assert stored["job_summary"]["company"] is None


@pytest.mark.parametrize("case", list(INVALID))
def test_each_bound_of_each_new_kind_is_refused_with_details_and_charges_nothing(
    producer: Producer, db: Db, case: str
) -> None:
    kind, job_input, field = INVALID[case]
    user = new_user()

    with pytest.raises(InputError) as caught:
        submit(producer, user, kind, job_input)

    error = caught.value
    assert (error.status, error.code) == (400, "invalid_input")
    assert isinstance(error.details, dict) and field in error.details, error.details
    assert db.coins(user) is None  # nothing reached the database
    assert db.jobs_of(user) == []
    assert producer.state.live("paid") == 0


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_each_new_kind_runs_through_the_worker_to_a_valid_result_in_its_inputs_language(
    producer: Producer, make_worker: Callable[..., WorkerEnv], db: Db, kind: str, lang: str
) -> None:
    env, user = make_worker(), new_user()
    job_input = good_input(kind, lang)
    if kind == "pre_match_audit" and lang == "en":
        job_input["job_summary"] = JOB_SUMMARY
    submitted = submit(producer, user, kind, job_input)

    response = deliver(env, submitted, user)

    assert response.status_code == 200, response.get_json()
    row = db.job(submitted.job.id)
    assert row["status"] == "succeeded", row["error"]
    registry()[kind].result_model.model_validate(row["result"])
    assert detect_language(json.dumps(row["result"], ensure_ascii=False)) == lang
    deltas = "".join(e.data["text"] for e in env.stream(submitted.job.id) if e.type == "delta")
    assert json.loads(deltas) == row["result"]


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_a_fault_marker_in_a_new_kinds_input_reaches_the_offline_llm(
    producer: Producer, make_worker: Callable[..., WorkerEnv], db: Db, kind: str
) -> None:
    env, user = make_worker(), new_user()
    job_input = {name: f"{text} [[llm:invalid_json]]" for name, text in good_input(kind).items()}
    submitted = submit(producer, user, kind, job_input)

    deliver(env, submitted, user)

    row = db.job(submitted.job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "invalid_model_output"
