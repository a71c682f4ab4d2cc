"""The Upstash REST stand-in, driven by the official `upstash_redis` client and checked on the real
Redis behind it with redis-py."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from helpers.net import free_port, serve_wsgi, wait_for
from upstash_redis import Redis as UpstashRedis
from upstash_redis.errors import UpstashError

from scripts.fakes import upstash_standin

TOKEN = "standin-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
B64 = {**AUTH, "Upstash-Encoding": "base64"}


@pytest.fixture(scope="module")
def standin_url(redis_url: str) -> Iterator[str]:
    app = upstash_standin.create_app(redis_url, TOKEN, keepalive_seconds=0.2)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        upstash_standin.close(app)


@pytest.fixture
def upstash(standin_url: str) -> Iterator[UpstashRedis]:
    client = UpstashRedis(standin_url, TOKEN, rest_retries=0, allow_telemetry=False)
    yield client
    client.close()


@pytest.fixture
def direct(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def stream_ids(direct: redis.Redis, key: str) -> list[str]:
    return [str(entry_id) for entry_id, _ in direct.xrange(key) or []]


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, json=body, headers=AUTH if headers is None else headers, timeout=10)


def test_a_request_without_the_right_bearer_token_is_rejected_with_401(
    standin_url: str, redis_prefix: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = post(standin_url, ["SET", f"{redis_prefix}k", "v"], headers)
        assert (answer.status_code, answer.json()) == (401, {"error": "Unauthorized"})
    intruder = UpstashRedis(standin_url, "wrong", rest_retries=0, allow_telemetry=False)
    with pytest.raises(UpstashError, match="Unauthorized"):
        intruder.get(f"{redis_prefix}k")
    intruder.close()
    answer = requests.get(f"{standin_url}/ping", params={"_token": TOKEN}, timeout=10)
    assert answer.json() == {"result": "PONG"}


def test_string_commands_round_trip_and_land_in_the_real_redis(
    upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}greeting"
    assert upstash.set(key, "héllo wörld") is True
    assert direct.get(key) == "héllo wörld"
    assert upstash.get(key) == "héllo wörld"
    assert upstash.get(f"{redis_prefix}missing") is None
    assert upstash.incr(f"{redis_prefix}n") == 1
    assert upstash.incrby(f"{redis_prefix}n", 41) == 42
    assert direct.get(f"{redis_prefix}n") == "42"
    assert upstash.set(key, "again", nx=True) is False
    assert upstash.ping() == "PONG"
    assert upstash.delete(key, f"{redis_prefix}n", f"{redis_prefix}missing") == 2
    assert direct.exists(key) == 0


def test_hashes_sets_and_sorted_sets_keep_their_shapes_and_scores(
    upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    h, s, z = f"{redis_prefix}h", f"{redis_prefix}s", f"{redis_prefix}z"
    assert upstash.hset(h, values={"a": "1", "b": "two"}) == 2
    assert upstash.hgetall(h) == {"a": "1", "b": "two"}
    assert upstash.hincrby(h, "a", 4) == 5
    assert direct.hgetall(h) == {"a": "5", "b": "two"}
    assert upstash.sadd(s, "x", "y", "x") == 2
    assert sorted(upstash.smembers(s)) == ["x", "y"]
    assert upstash.zadd(z, {"low": 1.5, "high": 10}) == 2
    assert upstash.zrange(z, 0, -1, withscores=True) == [("low", 1.5), ("high", 10.0)]
    assert upstash.zscore(z, "high") == 10.0
    assert direct.zscore(z, "low") == 1.5


def test_stream_commands_return_the_entries_the_real_redis_holds(
    upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}events"
    first = upstash.xadd(key, "*", {"type": "status", "n": "1"})
    second = upstash.xadd(key, "*", {"type": "delta", "n": "2"})
    assert stream_ids(direct, key) == [first, second]
    assert upstash.xrange(key, "-", "+") == [
        [first, ["type", "status", "n", "1"]],
        [second, ["type", "delta", "n", "2"]],
    ]
    assert upstash.xread({key: first}) == [[key, [[second, ["type", "delta", "n", "2"]]]]]
    assert upstash.xlen(key) == 2
    assert upstash.xtrim(key, maxlen=1, approximate=False) == 1
    assert stream_ids(direct, key) == [second]


def test_lua_scripts_return_ints_strings_nil_nested_tables_and_errors(
    upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}lua"
    script = "redis.call('SET', KEYS[1], ARGV[1]); return {7, ARGV[1], {false, 'deep'}}"
    assert upstash.eval(script, [key], ["val"]) == [7, "val", [None, "deep"]]
    assert direct.get(key) == "val"
    assert upstash.eval("return 42") == 42
    assert upstash.eval("return 'text'") == "text"
    assert upstash.eval("return nil") is None
    with pytest.raises(UpstashError, match="boom"):
        upstash.eval("return redis.error_reply('ERR boom')")
    with pytest.raises(UpstashError, match="ERR"):
        upstash.eval("return redis.call('INCR', KEYS[1])", [key])
    sha = upstash.script_load("return {KEYS[1], tonumber(ARGV[1]) * 2}")
    assert upstash.evalsha(sha, [key], ["21"]) == [key, 42]
    with pytest.raises(UpstashError, match="NOSCRIPT"):
        upstash.evalsha("0" * 40)


def test_expiry_commands_report_what_the_real_redis_reports(
    upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}ttl"
    upstash.set(key, "v")
    assert upstash.ttl(key) == -1
    assert upstash.expire(key, 100) is True
    assert 90 <= upstash.ttl(key) <= 100
    assert upstash.pexpire(key, 50_000) is True
    assert 40_000 <= upstash.pttl(key) <= 50_000
    assert 40_000 <= direct.pttl(key) <= 50_000
    assert upstash.ttl(f"{redis_prefix}missing") == -2


def test_a_pipeline_returns_one_result_per_command_in_order_even_after_an_error(
    upstash: UpstashRedis, direct: redis.Redis, standin_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}p"
    pipe = upstash.pipeline()
    pipe.set(key, "1")
    pipe.incr(key)
    pipe.get(key)
    assert pipe.exec() == [True, 2, "2"]
    answer = post(
        f"{standin_url}/pipeline",
        [["SET", f"{redis_prefix}s", "x"], ["INCR", f"{redis_prefix}s"], ["BLPOP", key, 0],
         ["GET", f"{redis_prefix}s"]],
        B64,
    )  # fmt: skip
    assert answer.status_code == 200
    body = answer.json()
    assert body[0] == {"result": "OK"}
    assert body[1]["error"].startswith("ERR value is not an integer")
    assert "BLPOP" in body[2]["error"]
    assert body[3] == {"result": base64.b64encode(b"x").decode()}


def test_a_transaction_runs_in_multi_exec_and_reports_per_command_errors(
    upstash: UpstashRedis, direct: redis.Redis, standin_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}t"
    tx = upstash.multi()
    tx.set(key, "a")
    tx.append(key, "b")
    tx.get(key)
    assert tx.exec() == [True, 2, "ab"]
    answer = post(f"{standin_url}/multi-exec", [["SET", key, "x"], ["INCR", key], ["GET", key]])
    assert answer.status_code == 200
    body = answer.json()
    assert body[0] == {"result": "OK"}
    assert body[1]["error"].startswith("ERR value is not an integer")
    assert body[2] == {"result": "x"}
    # A malformed command discards the whole transaction: one error, nothing written.
    discarded = post(f"{standin_url}/multi-exec", [["SET", key, "y"], ["GET"]])
    assert discarded.status_code == 400
    assert discarded.json()["error"].startswith("ERR wrong number of arguments")
    refused = post(f"{standin_url}/multi-exec", [["SET", key, "z"], ["WATCH", key]])
    assert refused.status_code == 400 and "WATCH" in refused.json()["error"]
    assert direct.get(key) == "x"


def test_base64_encoding_covers_every_string_except_the_ok_status(
    standin_url: str, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}b"
    assert post(standin_url, ["SET", key, "OK"], B64).json() == {"result": "OK"}
    assert post(standin_url, ["PING"], B64).json() == {"result": "UE9ORw=="}
    direct.rpush(f"{redis_prefix}l", "a", "b")
    assert post(standin_url, ["LRANGE", f"{redis_prefix}l", 0, -1], B64).json() == {
        "result": ["YQ==", "Yg=="]
    }
    assert post(standin_url, ["LLEN", f"{redis_prefix}l"], B64).json() == {"result": 2}
    assert post(standin_url, ["GET", f"{redis_prefix}none"], B64).json() == {"result": None}
    raw = redis.Redis(connection_pool=direct.connection_pool)
    raw.execute_command("SET", f"{redis_prefix}bin", b"\xff\x00a")
    encoded = post(standin_url, ["GET", f"{redis_prefix}bin"], B64).json()["result"]
    assert base64.b64decode(encoded) == b"\xff\x00a"
    assert post(standin_url, ["GET", f"{redis_prefix}bin"]).json() == {"result": "\ufffd\x00a"}
    assert post(standin_url, ["PING"]).json() == {"result": "PONG"}


def test_redis_errors_come_back_as_400_with_the_full_redis_message(
    standin_url: str, upstash: UpstashRedis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}wrongtype"
    upstash.sadd(key, "m")
    answer = post(standin_url, ["GET", key])
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("WRONGTYPE ")
    assert post(standin_url, ["GET"]).json()["error"].startswith("ERR wrong number of arguments")
    assert post(standin_url, ["NOSUCHCOMMAND"]).json()["error"].startswith("ERR unknown command")
    for bad in ({"not": "a list"}, [], [["nested"]], "GET"):
        assert post(standin_url, bad).status_code == 400
    with pytest.raises(UpstashError, match="WRONGTYPE"):
        upstash.get(key)


def test_blocking_commands_and_watch_are_refused_like_upstash_does(
    standin_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}q"
    for command in (
        ["BLPOP", key, 0],
        ["XREAD", "BLOCK", 0, "STREAMS", key, "$"],
        ["xread", "count", 1, "block", 10, "streams", key, "0"],
        ["WATCH", key],
        ["SUBSCRIBE", "c"],
        ["MULTI"],
    ):
        answer = post(standin_url, command)
        assert answer.status_code == 400, command
        assert "not available" in answer.json()["error"]
    # Without BLOCK, XREAD is an ordinary read, even on a stream named "block".
    assert post(standin_url, ["XREAD", "STREAMS", "block", "0"]).json() == {"result": None}


def test_the_documented_path_form_runs_commands_with_body_and_query_arguments(
    standin_url: str, direct: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}path/with slash"
    quoted = requests.utils.quote(key, safe="")
    answer = requests.get(f"{standin_url}/set/{quoted}/bar", headers=AUTH, timeout=10)
    assert answer.json() == {"result": "OK"}
    assert direct.get(key) == "bar"
    body = '{"json": "value"}'
    answer = requests.post(
        f"{standin_url}/set/{quoted}", data=body, params={"EX": "100"}, headers=AUTH, timeout=10
    )
    assert answer.json() == {"result": "OK"}
    assert direct.get(key) == body
    assert 90 <= direct.ttl(key) <= 100
    answer = requests.get(f"{standin_url}/GET/{quoted}", headers=B64, timeout=10)
    assert base64.b64decode(answer.json()["result"]).decode() == body
    assert (
        requests.get(f"{standin_url}/blpop/{quoted}/0", headers=AUTH, timeout=10).status_code == 400
    )


def read_data_line(lines: Iterator[str | bytes], timeout: float = 5.0) -> str:
    """The next `data:` line of an SSE stream, skipping keep-alive comments and blank lines."""
    deadline = time.monotonic() + timeout
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line.startswith("data: "):
            return line[len("data: ") :]
        # Keep-alives arrive every 0.2 s here, so this check runs even when no data comes.
        if time.monotonic() > deadline:
            raise AssertionError(f"no data line within {timeout}s")
    raise AssertionError("the stream ended")


def test_a_publish_reaches_a_subscribed_sse_client(
    standin_url: str, upstash: UpstashRedis, direct: redis.Redis, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}chan"
    with requests.post(
        f"{standin_url}/subscribe/{channel}",
        headers={**AUTH, "Accept": "text/event-stream"},
        stream=True,
        timeout=10,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.iter_lines(decode_unicode=True)
        assert read_data_line(lines) == f"subscribe,{channel},1"
        assert upstash.publish(channel, "hello, world") == 1
        assert read_data_line(lines) == f"message,{channel},hello, world"
        direct.publish(channel, '{"n": 2}')
        assert read_data_line(lines) == f'message,{channel},{{"n": 2}}'


def test_a_pattern_subscription_reports_the_pattern_and_the_channel(
    standin_url: str, direct: redis.Redis, redis_prefix: str
) -> None:
    with requests.post(
        f"{standin_url}/psubscribe/{redis_prefix}job:*", headers=AUTH, stream=True, timeout=10
    ) as stream:
        lines = stream.iter_lines(decode_unicode=True)
        assert read_data_line(lines) == f"psubscribe,{redis_prefix}job:*,1"
        direct.publish(f"{redis_prefix}job:7", "done")
        assert read_data_line(lines) == f"pmessage,{redis_prefix}job:*,{redis_prefix}job:7,done"


def test_a_subscription_is_released_after_the_client_disconnects(
    standin_url: str, direct: redis.Redis, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}gone"
    stream = requests.post(
        f"{standin_url}/subscribe/{channel}", headers=AUTH, stream=True, timeout=10
    )
    assert read_data_line(stream.iter_lines(decode_unicode=True)) == f"subscribe,{channel},1"
    assert direct.pubsub_numsub(channel) == [(channel, 1)]
    stream.close()
    wait_for(
        lambda: direct.pubsub_numsub(channel) == [(channel, 0)],
        timeout=5,
        what="the stand-in to drop the Redis subscription",
    )
    unauthorized = requests.post(f"{standin_url}/subscribe/{channel}", timeout=10)
    assert unauthorized.status_code == 401


def test_a_subscription_by_get_is_refused_with_405_as_only_post_is_documented(
    standin_url: str, direct: redis.Redis, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}by-get"
    for path in (f"subscribe/{channel}", f"psubscribe/{channel}*"):
        answer = requests.get(f"{standin_url}/{path}", headers=AUTH, timeout=10)
        assert answer.status_code == 405, path
        assert answer.headers["Allow"] == "POST"
        assert "POST" in answer.json()["error"]
    assert direct.pubsub_numsub(channel) == [(channel, 0)]


def test_main_serves_the_api_from_the_command_line_and_environment(redis_url: str) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "UPSTASH_REDIS_REST_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.fakes.upstash_standin", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ping() -> bool:
            try:
                answer = post(f"http://127.0.0.1:{port}", ["PING"])
            except requests.ConnectionError:
                return False
            return answer.json() == {"result": "PONG"}

        wait_for(ping, timeout=10, what="the stand-in to answer PING")
    finally:
        proc.terminate()
        proc.wait(10)
    missing = subprocess.run(
        [sys.executable, "-m", "scripts.fakes.upstash_standin"],
        env={k: v for k, v in env.items() if k not in ("REDIS_URL", "UPSTASH_REDIS_REST_TOKEN")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "REDIS_URL" in missing.stderr
