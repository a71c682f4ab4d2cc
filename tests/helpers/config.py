"""lib/config.py's test helpers (test_config.py, test_config_checks.py): complete settings for each
role (`API` and `WORKER` on the public dev values, which need APP_ENV=development), setting them in
the environment, and the text of the ConfigError a load raises.
"""

from __future__ import annotations

import pytest

from lib.config import DEV_JWT_SECRET, load
from lib.errors import ConfigError
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

COMMON = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://127.0.0.1/cs",
    "WORKER_URL": "http://127.0.0.1:8080",
}


# The public dev values: accepted only with APP_ENV=development said explicitly (on loopback).
API = {
    **COMMON,
    "APP_ENV": "development",
    "SUPABASE_JWT_SECRET": DEV_JWT_SECRET,
    "QSTASH_TOKEN": DEV_TOKEN,
}


# A worker publishes its own retries and waits (EXECUTION_MODE=detached, the default).
WORKER = {
    **COMMON,
    "APP_ENV": "development",
    "QSTASH_TOKEN": DEV_TOKEN,
    "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
    "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
}


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def config_error(role: str = "any", **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(role, **overrides)  # type: ignore[arg-type]
    return str(caught.value)
