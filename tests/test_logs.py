"""lib/logs.py: JSON lines with extras such as `job_id`, and redaction of secret-shaped text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import jwt
import pytest

from lib.logs import JsonFormatter, RedactingFilter, TextFormatter, redact

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
