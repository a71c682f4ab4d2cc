"""A stack's parts as child processes: `Component` (one process, how it starts and how it shows it
is healthy), `Ports` (one loopback port per component), and the process-group steps that
`Stack` (scripts/stack/devstack.py) and its watchdog use to stop them. `ROOT` is where every
component runs; `STATE_DIR` (.devstack/) holds the stack's own files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from scripts.stack import embedded

ROOT = Path(__file__).resolve().parents[2]


STATE_DIR = ROOT / ".devstack"


@dataclass
class Component:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    health_headers: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class Ports:
    producer: int = 3000
    worker: int = 8080
    broker: int = 8081
    llm: int = 8400
    upstash: int = 8079
    postgrest: int = 8078
    worker2: int = 8082  # the second worker box (WORKERS=2)
    storage: int = 8077

    @classmethod
    def free(cls) -> Ports:
        """Free loopback ports for every component (tests, or a second stack beside a first)."""
        return cls(*(embedded.free_port() for _ in fields(cls)))


def group_target(proc: subprocess.Popen[bytes]) -> str:
    return f"pg {proc.pid} {int(signal.SIGKILL)}"


def server_targets(server: embedded.Embedded) -> list[str]:
    targets = [f"pid {server.pid} {int(server.kill_signal)}"] if server.pid else []
    return targets + ([f"rm {server.scratch}"] if server.scratch else [])


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every process group at once; SIGKILL those still running after `grace` s."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(5)


def signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass
