"""`GET /api/health?deep=1` (api/health.py): each dependency checked, at most once per 10 s per
instance, however many callers.

The function runs in-process on the real Redis and Postgres, configured through its environment
as on Vercel. The Redis backend is wrapped to count its PINGs (each reaches the real server).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import pytest

from lib import config


class CountingPings:
    """The real backend; counts `ping` calls (the deep check's Redis request)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.pings = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def ping(self) -> None:
        self.pings += 1
        self.backend.ping()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


@pytest.fixture
def health(base_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    import api._common

    for name, value in base_settings.items():
        monkeypatch.setenv(name.upper(), str(value))
    config.settings.cache_clear()
    api._common.producer.cache_clear()
    module = importlib.import_module("api.health")
    monkeypatch.setattr(module, "deep_checks", module.DeepChecks(module.DEEP_CHECK_TTL_S, CLOCK))
    CLOCK.now = 1000.0
    service = api._common.producer()
    service.state.backend = CountingPings(service.state.backend)
    try:
        yield module
    finally:
        service.store.close()
        service.state.close()
        config.settings.cache_clear()
        api._common.producer.cache_clear()


def deep(module: ModuleType) -> Any:
    return module.app.test_client().get("/api/health?deep=1")


def test_a_flood_of_deep_checks_reaches_redis_once(health: ModuleType) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: deep(health), range(40)))

    assert [a.status_code for a in answers] == [200] * 40
    assert answers[0].json["checks"]["redis"]["ok"]
    assert answers[0].json["checks"]["db"]["ok"]
    assert all(a.json["checks"] == answers[0].json["checks"] for a in answers)
    assert health.producer().state.backend.pings == 1


def test_the_check_runs_again_once_older_than_its_ttl(health: ModuleType) -> None:
    first = deep(health).json
    CLOCK.now += health.DEEP_CHECK_TTL_S - 0.5
    cached = deep(health).json
    CLOCK.now += 0.5
    fresh = deep(health).json

    assert (first["age_s"], cached["age_s"], fresh["age_s"]) == (0, 9.5, 0)
    assert health.producer().state.backend.pings == 2


def test_liveness_reaches_no_dependency(health: ModuleType) -> None:
    answer = health.app.test_client().get("/api/health")

    assert (answer.status_code, answer.json) == (200, {"ok": True})
    assert health.producer().state.backend.pings == 0
