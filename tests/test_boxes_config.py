"""WORKER_URLS, WORKER_MAX_JOBS and BOX_HEARTBEAT_SECONDS: lib/config.py and its checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.config import DEV_JWT_SECRET, Settings, load
from lib.errors import ConfigError
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

A, B = "https://a.example.com", "https://b.example.com"
BASE = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "database_url": "postgresql://127.0.0.1/cs",
    "app_env": "development",
    "host": "127.0.0.1",
}
API = {**BASE, "supabase_jwt_secret": DEV_JWT_SECRET, "qstash_token": DEV_TOKEN}
WORKER = {
    **BASE,
    "qstash_token": DEV_TOKEN,
    "qstash_current_signing_key": DEV_CURRENT_SIGNING_KEY,
    "qstash_next_signing_key": DEV_NEXT_SIGNING_KEY,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing Settings reads leaks in from the process or a `.env`."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


def refused(role: str, **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(role, **overrides)  # type: ignore[arg-type]
    return str(caught.value)


def test_a_producer_with_worker_urls_alone_publishes_to_the_first_by_default() -> None:
    settings = load("api", **API, worker_urls=f" {A}/ , {B}")  # type: ignore[arg-type]
    assert settings.boxes == [A, B]
    assert settings.execute_url == f"{A}/v1/execute"


def test_the_environment_lists_the_boxes_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_URLS", f"{A},{B}")
    assert Settings().boxes == [A, B]


def test_without_worker_urls_the_one_box_is_worker_url() -> None:
    settings = load("api", **API, worker_url=f"{A}/")  # type: ignore[arg-type]
    assert settings.boxes == [A] and settings.box_url == A


def test_production_refuses_a_box_that_is_not_https() -> None:
    production = {**API, "app_env": "production"}
    message = refused("api", **production, worker_urls=f"{A},http://b.example.com")
    assert "WORKER_URLS: 'http://b.example.com' must be a worker box's public https" in message
    assert "'https://a.example.com'" not in message


def test_a_box_listed_twice_or_not_a_url_is_refused() -> None:
    assert "lists a box twice" in refused("api", **API, worker_urls=f"{A},{A}")
    assert "WORKER_URLS: 'ftp://x' must be" in refused("api", **API, worker_urls="ftp://x")


def test_a_worker_whose_own_url_is_not_listed_is_refused() -> None:
    message = refused("worker", **WORKER, worker_url="http://c.example.com", worker_urls=f"{A},{B}")
    assert "WORKER_URL must be one of WORKER_URLS" in message
    message = refused("worker", **WORKER, worker_urls=f"{A},{B}")
    assert "WORKER_URL must be this worker box's own" in message
    assert load("worker", **WORKER, worker_url=B, worker_urls=f"{A},{B}").box_url == B  # type: ignore[arg-type]


def test_worker_max_jobs_defaults_to_processes_times_threads_or_background_jobs() -> None:
    inline = Settings(web_concurrency=3, gunicorn_threads=50, execution_mode="inline")  # type: ignore[call-arg]
    assert inline.max_jobs == 150
    # Detached (the default): 500 background jobs per process, whatever the threads.
    assert Settings(web_concurrency=3, gunicorn_threads=50).max_jobs == 1500  # type: ignore[call-arg]
    assert Settings(worker_max_jobs=40).max_jobs == 40  # type: ignore[call-arg]
    assert "WORKER_MAX_JOBS" in refused("any", worker_max_jobs=-1)
    assert "BOX_HEARTBEAT_SECONDS" in refused("any", box_heartbeat_seconds=0)
