"""Kills a supervisor's children if the supervisor dies, however it dies (even by SIGKILL).

A parent-death signal (Linux's PR_SET_PDEATHSIG) is not enough for the dev stack: it reaches
only direct children, not gunicorn's workers nor the Postgres that pg_ctl detaches; it does not
exist on macOS; and it fires when the *thread* that spawned the child ends (prctl(2)), which would
kill a component that chaos restarted from a short-lived thread. Instead a small process in its
own session holds the read end of a pipe that only the supervisor writes: when the supervisor
dies the kernel closes the pipe, and the watchdog kills every target it was told about. The same
on Linux and macOS.

Its orders, one a line on stdin: "+TARGET" remembers a target, "-TARGET" forgets it, "done" ends
the watch. At end of file it kills every remembered target, "pg PGID SIGNAL" (a process group) or
"pid PID SIGNAL" (one process), waits up to 5 s for them to go, then removes every "rm PATH".
This file runs as a script with the standard library alone (`python -I watchdog.py`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import TextIO


class Watchdog:
    """The supervisor's side: start the watchdog, tell it what to kill, end the watch."""

    def __init__(self) -> None:
        read, self._write = os.pipe()  # the write end is not inherited by other children
        # Re-entrant: a supervisor's signal handler may call close() while a line is written.
        self._lock = threading.RLock()
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=read,
            start_new_session=True,  # a Ctrl-C on the terminal does not reach it
        )
        os.close(read)

    def _send(self, line: str) -> None:
        with self._lock:
            if self._write < 0:
                return
            with contextlib.suppress(OSError):  # the watchdog is gone: nothing more it can do
                os.write(self._write, f"{line}\n".encode())

    def watch(self, target: str) -> None:
        """Kill `target` ("pg PGID SIG", "pid PID SIG" or "rm PATH") if the supervisor dies."""
        self._send(f"+{target}")

    def forget(self, target: str) -> None:
        """No longer watch `target` (it was stopped)."""
        self._send(f"-{target}")

    def close(self, *, kill: bool) -> None:
        """End the watch: kill every remembered target now (kill=True), or leave them be."""
        if not kill:
            self._send("done")
        with self._lock:
            if self._write >= 0:
                os.close(self._write)
                self._write = -1
        self.proc.wait(15)


def _alive(pid: int) -> bool:
    """Still running: a zombie (killed, not yet reaped by its parent) counts as gone."""
    if os.path.isdir("/proc/self"):  # Linux: the state letter follows the ")" of the name
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rpartition(")")[2].split()[0] != "Z"
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def watch(orders: TextIO) -> None:
    """Follow the orders until end of file, then kill what is still watched."""
    targets: dict[str, None] = {}  # ordered: kills, then removals, in the order given
    for raw in orders:
        line = raw.strip()
        if line == "done":
            return
        if line.startswith("+"):
            targets[line[1:]] = None
        elif line.startswith("-"):
            targets.pop(line[1:], None)
    killed = []
    for target in targets:
        kind, _, rest = target.partition(" ")
        if kind in ("pg", "pid"):
            ident, signum = (int(word) for word in rest.split())
            with contextlib.suppress(OSError):
                (os.killpg if kind == "pg" else os.kill)(ident, signum)
                killed.append(ident)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    for target in targets:
        if target.startswith("rm "):
            shutil.rmtree(target[3:], ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(sys.stdin)
