"""Logging: JSON lines in production, plain text in dev. Job log lines carry `job_id`.

Never pass tokens, keys or resume text to a logger: only ids, codes, counts and durations.
`RedactingFilter` is a second line of defence that masks anything shaped like a JWT or a
bearer token, should one slip into a message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_SECRETS = re.compile(
    r"(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*|sig_[A-Za-z0-9]{8,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}|sk-[A-Za-z0-9_-]{8,})"
)


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


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


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "openai", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
