"""The Upstash REST adapter (lib/state/rest.py) when Upstash cannot serve: every method turns the
service's answers (daily-limit error, edge 5xx in HTML, a hang) into UnavailableError, while
Redis's own verdict on one of our scripts stays loud. Through the stand-in's fault switch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from helpers.net import serve_wsgi
from upstash_redis.errors import UpstashError

from lib.errors import UnavailableError
from lib.state import scripts
from lib.state.rest import RestBackend
from lib.state.scripts import Script
from scripts.fakes import upstash_standin
from scripts.fakes.upstash_faults import FAULT_KINDS, Fault

TOKEN = "rest-outage-token"
TIMEOUT = 0.4  # the adapter's per-request timeout, which a hang outlasts


@pytest.fixture
def standin(redis_url: str) -> Iterator[tuple[Flask, str]]:
    # Keep-alives every 0.2 s let a listener notice its stop flag quickly.
    app = upstash_standin.create_app(redis_url, TOKEN, keepalive_seconds=0.2, hang_seconds=10)
    try:
        with serve_wsgi(app) as url:
            yield app, url
    finally:
        upstash_standin.close(app)


@pytest.fixture
def backend(standin: tuple[Flask, str]) -> Iterator[RestBackend]:
    rest = RestBackend(standin[1], TOKEN, timeout=TIMEOUT)
    yield rest
    rest.close()


def _listen(rest: RestBackend, channel: str) -> list[str]:
    """Listen for half a second (or until the subscription fails)."""
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        return list(rest.listen(channel, stop))
    finally:
        timer.cancel()


CALLS: dict[str, Callable[[RestBackend, str], Any]] = {
    "run": lambda rest, p: rest.run(scripts.LIVE, [f"{p}live:paid"], [0]),
    "run_many": lambda rest, p: rest.run_many([(scripts.LIVE, [f"{p}live:free"], [0])]),
    "read": lambda rest, p: rest.read(f"{p}events", "0", 10),
    "wait": lambda rest, p: rest.wait(f"{p}events", f"{p}notify", "0", 0.5, 10),
    "listen": lambda rest, p: _listen(rest, f"{p}watch"),
    "ping": lambda rest, p: rest.ping(),
    "command": lambda rest, p: rest.command("GET", f"{p}k"),
}


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_method_reports_redis_unavailable_when_upstash_cannot_serve(
    standin: tuple[Flask, str], backend: RestBackend, redis_prefix: str, kind: str, method: str
) -> None:
    CALLS[method](backend, redis_prefix)  # warm: scripts loaded, connection open
    upstash_standin.set_fault(standin[0], Fault(kind))

    with pytest.raises(UnavailableError) as caught:
        CALLS[method](backend, redis_prefix)

    assert (caught.value.status, caught.value.code) == (503, "unavailable")
    assert upstash_standin.fault_hits(standin[0]) >= 1
    upstash_standin.set_fault(standin[0], None)
    CALLS[method](backend, redis_prefix)  # served again once Upstash is back


def test_a_script_error_inside_our_own_script_stays_loud(
    backend: RestBackend, redis_prefix: str
) -> None:
    broken = Script("broken", "return redis.call('INCR', KEYS[1])")
    undefined = Script("undefined", "return missing_global.field")
    backend.command("SET", f"{redis_prefix}text", "not a number")

    for script in (broken, undefined):
        with pytest.raises(UpstashError, match="user_script") as caught:
            backend.run(script, [f"{redis_prefix}text"], [])
        assert not isinstance(caught.value, UnavailableError)
    with pytest.raises(UpstashError, match="^WRONGTYPE"):
        backend.command("HGETALL", f"{redis_prefix}text")


def test_a_redis_that_forgot_our_scripts_is_not_an_outage(
    backend: RestBackend, redis_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}live:paid"
    assert backend.run(scripts.LIVE, [key], [0]) == 0
    with redis.Redis.from_url(redis_url) as direct:
        direct.script_flush()  # NOSCRIPT on the next EVALSHA: the adapter sends the source

    assert backend.run(scripts.LIVE, [key], [0]) == 0
