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


@pytest.fixture(params=[{}])
def health(
    request: pytest.FixtureRequest, base_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """api/health.py configured through its environment (base settings, then the test's own
    `request.param`), with a fresh deep-check cache on the test's clock."""
    import api._common

    for name, value in {**base_settings, **request.param}.items():
        monkeypatch.setenv(name.upper(), str(value))
    config.settings.cache_clear()
    api._common.producer.cache_clear()
    module = importlib.import_module("api.health")
    monkeypatch.setattr(module, "deep_checks", module.DeepChecks(clock=CLOCK))
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


def test_the_check_runs_again_once_older_than_health_cache_seconds(health: ModuleType) -> None:
    first = deep(health).json
    CLOCK.now += 9.5  # HEALTH_CACHE_SECONDS is 10 by default
    cached = deep(health).json
    CLOCK.now += 0.5
    fresh = deep(health).json

    assert (first["age_s"], cached["age_s"], fresh["age_s"]) == (0, 9.5, 0)
    assert health.producer().state.backend.pings == 2


@pytest.mark.parametrize("health", [{"health_cache_seconds": 0}], indirect=True)
def test_with_health_cache_seconds_0_every_call_checks(health: ModuleType) -> None:
    answers = [deep(health).json for _ in range(3)]

    assert [a["age_s"] for a in answers] == [0, 0, 0]
    assert health.producer().state.backend.pings == 3


def test_a_cache_time_out_of_range_is_refused(base_settings: dict[str, Any]) -> None:
    for wrong in (-1, 301):
        with pytest.raises(config.ConfigError, match="HEALTH_CACHE_SECONDS"):
            config.load("api", **{**base_settings, "health_cache_seconds": wrong})


def test_liveness_reaches_no_dependency(health: ModuleType) -> None:
    answer = health.app.test_client().get("/api/health")

    assert (answer.status_code, answer.json) == (200, {"ok": True})
    assert health.producer().state.backend.pings == 0
