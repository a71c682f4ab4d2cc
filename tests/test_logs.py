"""lib/logs.py: JSON lines (or text) with the job's fields from the job scope, the user id only
as a hash, and redaction of secret-shaped text."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import jwt
import pytest

from lib import logs
from lib.logs import (
    JobFieldsFilter,
    JsonFormatter,
    RedactingFilter,
    TextFormatter,
    job_scope,
    redact,
    user_hash,
)

if TYPE_CHECKING:
    from helpers.worker import WorkerEnv


JWT = jwt.encode({"sub": "u", "aud": "authenticated"}, "k" * 32, algorithm="HS256")
SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
OPENAI_KEY = "sk-proj-AbCdEf0123456789_xyz"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    yield io.StringIO()


def make_logger(stream: io.StringIO, formatter: logging.Formatter) -> logging.Logger:
    logger = logging.getLogger(f"test_logs.{id(stream)}.{type(formatter).__name__}")
    logger.handlers[:] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(JobFieldsFilter())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_on_one_line_with_its_job_id(
    stream: io.StringIO,
) -> None:
    log = make_logger(stream, JsonFormatter())
    log.info("job started\nwith a newline", extra={"job_id": "j-1", "attempt": 2})
    log.warning("job finished", extra={"job_id": "j-1"})
    records = lines(stream)
    assert len(records) == 2
    assert records[0]["job_id"] == "j-1"
    assert records[0]["attempt"] == 2
    assert records[0]["msg"] == "job started\nwith a newline"
    assert records[0]["level"] == "info"
    assert records[1]["level"] == "warning"
    assert str(records[0]["ts"]).endswith("Z")


def test_a_json_record_does_not_repeat_the_standard_logging_attributes(
    stream: io.StringIO,
) -> None:
    make_logger(stream, JsonFormatter()).info("hello", extra={"job_id": "j-2"})
    [record] = lines(stream)
    assert set(record) == {"ts", "level", "logger", "msg", "job_id"}


def test_an_exception_is_kept_inside_the_one_json_line(stream: io.StringIO) -> None:
    log = make_logger(stream, JsonFormatter())
    try:
        raise RuntimeError(f"upstream said Bearer {JWT}")
    except RuntimeError:
        log.exception("call failed", extra={"job_id": "j-3"})
    [record] = lines(stream)
    assert "RuntimeError" in str(record["exc"])
    assert JWT not in stream.getvalue()


def test_redaction_masks_a_jwt_a_bearer_token_and_signing_and_api_keys() -> None:
    message = f"token={JWT} header=Bearer abcdef123456 key={SIGNING_KEY} openai={OPENAI_KEY} job=42"
    masked = redact(message)
    for secret in (JWT, "abcdef123456", SIGNING_KEY, OPENAI_KEY):
        assert secret not in masked
    assert masked.count("[redacted]") == 4
    assert "job=42" in masked


def test_redaction_leaves_ordinary_text_alone() -> None:
    text = "job 3f1c0a52 finished in 12.5 s; sketchy signals, task-list ok"
    assert redact(text) == text


def test_secrets_in_the_message_or_its_arguments_never_reach_the_json_line(
    stream: io.StringIO,
) -> None:
    log = make_logger(stream, JsonFormatter())
    log.info(f"authorization: bearer {JWT}", extra={"job_id": "j-4"})
    log.info("signing with %s and %s", SIGNING_KEY, OPENAI_KEY, extra={"job_id": "j-4"})
    output = stream.getvalue()
    for secret in (JWT, SIGNING_KEY, OPENAI_KEY):
        assert secret not in output
    assert [r["job_id"] for r in lines(stream)] == ["j-4", "j-4"]


def test_the_text_format_redacts_and_appends_extras(stream: io.StringIO) -> None:
    make_logger(stream, TextFormatter()).info(f"key {OPENAI_KEY}", extra={"job_id": "j-5"})
    output = stream.getvalue()
    assert OPENAI_KEY not in output
    assert "job_id=j-5" in output


# Job fields ------------------------------------------------------------------------------------

USER = "0b7c5e1e-8d0e-4c55-9f43-5a3c2f1d9e77"


def test_the_user_hash_is_the_sha256_of_the_id_cut_to_16_hex_digits() -> None:
    assert user_hash(USER) == hashlib.sha256(USER.encode()).hexdigest()[:16]
    assert user_hash(USER) != user_hash(USER.replace("7", "8"))


def test_every_line_inside_a_job_scope_carries_the_job_fields_and_none_after_it(
    stream: io.StringIO,
) -> None:
    log = make_logger(stream, JsonFormatter())
    with job_scope("j-6", user_id=USER):
        log.info("delivery received")
        logs.bind(attempt=2, kind="job_match")
        log.info("attempt started")
    log.info("idle")
    first, second, after = lines(stream)
    assert first["job_id"] == "j-6" and first["user_id"] == user_hash(USER)
    assert "attempt" not in first
    assert {k: second[k] for k in ("job_id", "attempt", "kind", "user_id")} == {
        "job_id": "j-6",
        "attempt": 2,
        "kind": "job_match",
        "user_id": user_hash(USER),
    }
    assert set(after) == {"ts", "level", "logger", "msg"}
    assert USER not in stream.getvalue()


def test_an_explicit_extra_wins_over_the_scope(stream: io.StringIO) -> None:
    log = make_logger(stream, JsonFormatter())
    with job_scope("j-7", kind="job_match"):
        log.info("other job", extra={"job_id": "j-8"})
    [record] = lines(stream)
    assert record["job_id"] == "j-8" and record["kind"] == "job_match"


def test_a_raw_user_id_passed_as_an_extra_is_logged_as_its_hash(stream: io.StringIO) -> None:
    make_logger(stream, JsonFormatter()).info("who", extra={"user_id": USER})
    assert lines(stream)[0]["user_id"] == user_hash(USER)
    assert USER not in stream.getvalue()


def test_an_inner_scope_for_the_same_job_shares_what_it_binds(stream: io.StringIO) -> None:
    log = make_logger(stream, JsonFormatter())
    with job_scope("j-9", user_id=USER):
        with job_scope("j-9", user_id=USER, tier="paid"):
            logs.bind(attempt=1, kind="interview_prep")
        log.warning("delivery failed")
        with job_scope("j-10"):
            log.info("another job")
    outer, other = lines(stream)
    assert (outer["attempt"], outer["kind"], outer["tier"]) == (1, "interview_prep", "paid")
    assert other["job_id"] == "j-10" and "attempt" not in other and "user_id" not in other


def test_the_scopes_of_concurrent_threads_do_not_mix(stream: io.StringIO) -> None:
    log = make_logger(stream, JsonFormatter())
    both_in = threading.Barrier(2)

    def work(job_id: str) -> None:
        with job_scope(job_id):
            both_in.wait(5)
            log.info("working", extra={"who": job_id})
            both_in.wait(5)

    threads = [threading.Thread(target=work, args=(f"j-{n}",)) for n in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    records = lines(stream)
    assert len(records) == 2 and all(r["job_id"] == r["who"] for r in records)


def test_the_text_format_for_dev_shows_the_job_fields(stream: io.StringIO) -> None:
    log = make_logger(stream, TextFormatter())
    with job_scope("j-13", user_id=USER, attempt=1, kind="job_match"):
        log.info("attempt started")
    line = stream.getvalue().strip()
    assert line.startswith("info    ") and "attempt started" in line
    for field in ("job_id=j-13", "attempt=1", "kind=job_match", f"user_id={user_hash(USER)}"):
        assert field in line
    assert USER not in line


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_writes_json_lines_by_default_or_text_with_the_job_fields(fmt: str) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        logs.setup("INFO", fmt, stream=out)
        with job_scope("j-14", user_id=USER):
            logging.getLogger("cs.test").info("hello %s", "there")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    text = out.getvalue()
    if fmt == "json":
        [record] = [json.loads(line) for line in text.splitlines()]
        assert record["msg"] == "hello there" and record["job_id"] == "j-14"
        assert record["user_id"] == user_hash(USER)
    else:
        assert text.startswith("info    cs.test: hello there job_id=j-14")
    assert USER not in text


def test_a_full_attempts_lines_carry_the_job_fields_and_never_the_raw_user_id(
    make_worker: Callable[..., WorkerEnv], capsys: pytest.CaptureFixture[str]
) -> None:
    from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, sign
    from lib.queue.wire import message_body

    env = make_worker(log_format="json")
    job = env.create_job("[[llm:fail_once=503]]", user_id=str(uuid.uuid4()))
    capsys.readouterr()
    raw = message_body(job.job_id, job.user_id, job.tier, 3)
    for retried, status in ((0, 503), (1, 200)):
        response = env.app.test_client().post(
            "/v1/execute",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "Upstash-Retried": str(retried),
                "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
            },
        )
        assert response.status_code == status

    text = capsys.readouterr().err
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    about_job = [r for r in records if r.get("job_id") == job.job_id]
    assert len(about_job) >= 4  # started and ended, twice
    for record in about_job:
        assert record["user_id"] == user_hash(job.user_id), record
        assert record["kind"] == "job_match", record
        assert record["attempt"] in (1, 2), record
    assert {r["attempt"] for r in about_job} == {1, 2}
    assert job.user_id not in text
