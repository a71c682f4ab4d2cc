"""Logging: JSON lines in production, plain text in dev (`LOG_FORMAT`).

Every line logged while a job is being handled carries `job_id`, `attempt`, `kind` and `user_id`
without the caller passing them: the executor opens a `job_scope` around a delivery and `bind`s
the attempt and kind once the job is loaded, and `JobFieldsFilter` copies the scope's fields onto
each record. `user_id` is always `user_hash(id)`, never the raw id.

Never pass tokens, keys or resume text to a logger: only ids, codes, counts and durations.
`RedactingFilter` is a second line of defence that masks anything shaped like a JWT or a
bearer token, should one slip into a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRETS = re.compile(
    r"(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*|sig_[A-Za-z0-9]{8,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}|sk-[A-Za-z0-9_-]{8,})"
)


_HASHED = re.compile(r"[0-9a-f]{16}")
_scope: ContextVar[dict[str, Any] | None] = ContextVar("cs_job_scope", default=None)


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


def user_hash(user_id: str) -> str:
    """The user id as logs show it: the first 16 hex digits of its sha256.

    Plain (unkeyed) on purpose: an operator finds a user's lines with
    `printf %s "$USER_ID" | sha256sum | cut -c1-16`, and the ids are random UUIDs, so the hash
    cannot be reversed by guessing."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


@contextmanager
def job_scope(job_id: str, *, user_id: str | None = None, **fields: Any) -> Iterator[None]:
    """Tag every log line of this thread (or task) with the job's fields until the block ends.

    A scope for the same job inside another one shares its fields, so what an inner block
    `bind`s is still on the outer block's lines."""
    outer = _scope.get()
    added = {"job_id": job_id, **fields}
    if user_id is not None:
        added["user_id"] = user_hash(user_id)
    if outer is not None and outer.get("job_id") == job_id:
        outer.update(added)
        yield
        return
    token = _scope.set(added)
    try:
        yield
    finally:
        _scope.reset(token)


def bind(**fields: Any) -> None:
    """Add fields (e.g. `attempt`, `kind`) to the current job scope; no-op outside one."""
    scope = _scope.get()
    if scope is not None:
        scope.update(fields)


def scope_fields() -> dict[str, Any]:
    """A copy of the current job scope's fields (empty outside a scope)."""
    return dict(_scope.get() or {})


class JobFieldsFilter(logging.Filter):
    """Adds the current job scope's fields to each record (explicit extras win), and hashes a
    raw `user_id` extra so the raw id never reaches a line."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_scope.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        raw = getattr(record, "user_id", None)
        if isinstance(raw, str) and not _HASHED.fullmatch(raw):
            record.user_id = user_hash(raw)
        return True


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: redact(v) if isinstance(v, str) else v
        for k, v in vars(record).items()
        if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{record.levelname.lower():7} {record.name}: {redact(record.getMessage())}"
        if extras:
            line += f" {extras}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def setup(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure the root logger once for this process: one handler on `stream` (stderr by
    default) that adds job fields, redacts, and formats as JSON lines or text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(JobFieldsFilter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "openai", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
