"""The Upstash REST stand-in's fault switch (scripts/fakes/upstash_faults.py), seen by the official
`upstash_redis` client and by plain HTTP, with the real Redis behind it checked by redis-py."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from flask import Flask
from helpers.net import serve_wsgi, wait_for
from upstash_redis import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from lib.errors import UnavailableError
from lib.state.rest import RestBackend
from scripts.fakes import upstash_standin
from scripts.fakes.upstash_faults import DAILY_LIMIT_ERROR, Fault

TOKEN = "fault-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Standin:
    app: Flask
    url: str

    def client(self, timeout: float = 5.0) -> UpstashRedis:
        client = UpstashRedis(self.url, TOKEN, rest_retries=0, allow_telemetry=False)
        client._http._client = httpx.Client(timeout=timeout)  # noqa: SLF001
        return client


@pytest.fixture
def standin(redis_url: str) -> Iterator[Standin]:
    app = upstash_standin.create_app(redis_url, TOKEN, hang_seconds=10)
    try:
        with serve_wsgi(app) as url:
            yield Standin(app, url)
    finally:
        upstash_standin.close(app)


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_the_limit_fault_answers_400_with_upstashs_daily_limit_error_and_runs_nothing(
    standin: Standin, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}k"
    upstash_standin.set_fault(standin.app, Fault("limit"))

    raw = httpx.post(standin.url, json=["SET", key, "v"], headers=AUTH)
    with pytest.raises(UpstashError, match="max daily request limit exceeded"):
        standin.client().set(key, "v")

    assert raw.status_code == 400
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.json() == {"error": DAILY_LIMIT_ERROR}
    assert direct.exists(key) == 0
    upstash_standin.set_fault(standin.app, None)
    assert standin.client().set(key, "v") is True
    assert upstash_standin.fault_hits(standin.app) == 2


def test_the_edge_fault_answers_502_with_an_html_body_that_the_sdk_cannot_decode(
    standin: Standin, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}k"
    upstash_standin.set_fault(standin.app, Fault("edge"))

    raw = httpx.post(standin.url, json=["SET", key, "v"], headers=AUTH)
    with pytest.raises(json.JSONDecodeError):
        standin.client().set(key, "v")

    assert raw.status_code == 502
    assert raw.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in raw.text
    assert direct.exists(key) == 0


def test_a_hang_outlasts_the_client_timeout_and_never_runs_the_command(
    standin: Standin, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}k"
    upstash_standin.set_fault(standin.app, Fault("hang"))

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        standin.client(timeout=0.3).set(key, "v")

    assert 0.3 <= time.monotonic() - started < 5
    answers: list[int] = []
    held = threading.Thread(
        target=lambda: answers.append(
            httpx.post(standin.url, json=["SET", key, "v"], headers=AUTH, timeout=10).status_code
        )
    )
    held.start()
    wait_for(lambda: upstash_standin.fault_hits(standin.app) == 2, 5, what="the second hang")
    upstash_standin.set_fault(standin.app, None)  # clearing releases the held request
    held.join(5)
    assert answers == [504]
    assert direct.exists(key) == 0
    assert standin.client().get(key) is None


def test_a_fault_scoped_to_a_script_meets_only_that_scripts_eval_and_evalsha(
    standin: Standin, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}n"
    target = "return redis.call('INCR', KEYS[1])"
    sha = hashlib.sha1(target.encode()).hexdigest()  # noqa: S324
    client = standin.client()
    upstash_standin.set_fault(standin.app, Fault("limit", script=sha, times=2))

    assert client.eval("return 7") == 7
    assert client.incr(key) == 1
    with pytest.raises(UpstashError, match="daily request limit"):
        client.eval(target, [key])
    with pytest.raises(UpstashError, match="daily request limit"):
        client.evalsha(sha, [key])
    assert direct.get(key) == "1"
    # `times` used up: the switch cleared itself.
    assert client.eval(target, [key]) == 2
    assert upstash_standin.fault_hits(standin.app) == 2


def test_a_subscription_meets_an_unscoped_fault(standin: Standin, redis_prefix: str) -> None:
    upstash_standin.set_fault(standin.app, Fault("limit"))

    answer = httpx.post(f"{standin.url}/subscribe/{redis_prefix}c", headers=AUTH)

    assert answer.status_code == 400
    assert answer.json() == {"error": DAILY_LIMIT_ERROR}


def test_the_switch_is_flipped_over_http_behind_the_token_and_refuses_malformed_faults(
    standin: Standin,
) -> None:
    control = f"{standin.url}/_standin/fault"

    assert httpx.put(control, json={"kind": "edge"}).status_code == 401
    for bad in ({"kind": "melt"}, {"kind": "limit", "script": "xyz"}, {"kind": "hang", "times": 0},
                {"kind": "limit", "extra": 1}, ["limit"]):  # fmt: skip
        assert httpx.put(control, json=bad, headers=AUTH).status_code == 400, bad
    assert httpx.get(control, headers=AUTH).json()["fault"] is None

    set_ = httpx.put(control, json={"kind": "edge", "times": 1}, headers=AUTH)

    assert set_.json()["fault"] == {"kind": "edge", "script": None, "times": 1, "command": None}
    assert httpx.post(standin.url, json=["PING"], headers=AUTH).status_code == 502
    assert httpx.post(standin.url, json=["PING"], headers=AUTH).json() == {"result": "PONG"}
    httpx.put(control, json={"kind": "limit"}, headers=AUTH)
    assert httpx.delete(control, headers=AUTH).json()["fault"] is None
    assert httpx.post(standin.url, json=["PING"], headers=AUTH).json() == {"result": "PONG"}


def test_a_fault_limited_to_a_command_spares_the_other_commands() -> None:
    from scripts.fakes.upstash_faults import Fault, FaultSwitch

    switch = FaultSwitch()
    switch.set(Fault("limit", command="XADD", times=1))
    assert switch.take([["PING"]]) is None
    assert switch.take([["EVALSHA", "0" * 40, "0"]]) is None
    assert switch.take([["xadd", "k", "*", "f", "v"]]) is not None
    assert switch.take([["XADD", "k", "*", "f", "v"]]) is None  # times=1: used up


def test_a_subscription_that_does_not_confirm_is_a_hang_only_past_the_clients_timeout(
    standin: Standin, redis_prefix: str
) -> None:
    """A wait shorter than the client's timeout that sees no confirmation reads instead (the
    caller's heartbeat comes first); one as long as the timeout calls it a hang."""
    backend = RestBackend(standin.url, TOKEN, timeout=0.5)
    stream, channel = f"{redis_prefix}ev", f"{redis_prefix}notify"
    backend.command("XADD", stream, "*", "t", "status")
    try:
        upstash_standin.set_fault(standin.app, Fault("hang", times=1))  # the subscription
        assert backend.wait(stream, channel, "0-1", 0.2, 10) != []
        upstash_standin.set_fault(standin.app, Fault("hang", times=1))
        with pytest.raises(UnavailableError):
            backend.wait(stream, channel, "0-1", 0.5, 10)
    finally:
        upstash_standin.set_fault(standin.app, None)
        backend.close()
