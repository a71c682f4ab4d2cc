"""The producer's `POST /api/reconcile` (api/reconcile.py): signed by QStash or refused.

The function runs in-process on the real Redis and Postgres, configured through its environment
as on Vercel. Signatures are made as QStash makes them (lib.queue.signing), for the endpoint's
public URL, PRODUCER_URL/api/reconcile.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from lib import config
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, sign

PRODUCER = "https://producer.example.test"
URL = f"{PRODUCER}/api/reconcile"


@pytest.fixture
def app(base_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    import api._common

    for name, value in {**base_settings, "producer_url": PRODUCER}.items():
        monkeypatch.setenv(name.upper(), str(value))
    config.settings.cache_clear()
    api._common.producer.cache_clear()
    module = importlib.import_module("api.reconcile")
    try:
        yield module.app
    finally:
        if api._common.producer.cache_info().currsize:
            service = api._common.producer()
            service.store.close()
            service.state.close()
        config.settings.cache_clear()
        api._common.producer.cache_clear()


def post(app: Flask, headers: dict[str, str], body: bytes = b"") -> Any:
    return app.test_client().post("/api/reconcile", data=body, headers=headers)


def test_a_signed_tick_runs_the_reconciler_and_answers_its_counts(app: Flask) -> None:
    resp = post(app, {"Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, URL, b"")})

    assert resp.status_code == 200
    assert {"republished", "failed", "refunded", "admissions_freed", "swept"} <= set(resp.json)


def test_the_next_signing_key_is_accepted_too(app: Flask) -> None:
    resp = post(app, {"Upstash-Signature": sign(DEV_NEXT_SIGNING_KEY, URL, b"")})

    assert resp.status_code == 200


def test_an_unsigned_call_is_refused_with_401(app: Flask) -> None:
    resp = post(app, {})

    assert resp.status_code == 401
    assert resp.json["error"]["code"] == "unauthorized"


def test_a_replayed_signature_is_refused(app: Flask) -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, b"")
    assert post(app, {"Upstash-Signature": signature}).status_code == 200

    resp = post(app, {"Upstash-Signature": signature})

    assert resp.status_code == 401
    assert "already used" in resp.json["error"]["message"]


@pytest.mark.parametrize(
    ("url", "key", "body", "now"),
    [
        ("https://producer.example.test/api/jobs", DEV_CURRENT_SIGNING_KEY, b"", None),
        (URL, "sig_" + "x" * 28, b"", None),
        (URL, DEV_CURRENT_SIGNING_KEY, b"other", None),
        (URL, DEV_CURRENT_SIGNING_KEY, b"", time.time() - 3600),
    ],
    ids=["another-destination", "wrong-key", "body-mismatch", "expired"],
)
def test_a_signature_for_anything_else_is_refused(
    app: Flask, url: str, key: str, body: bytes, now: float | None
) -> None:
    resp = post(app, {"Upstash-Signature": sign(key, url, body, now=now)})

    assert resp.status_code == 401
