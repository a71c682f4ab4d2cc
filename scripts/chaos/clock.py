"""Clock skew for `make chaos`: the worker runs under libfaketime with its wall clock shifted.

Only the worker's clock moves. In production the producer (Vercel), the broker (QStash), Redis
(Upstash) and Postgres (Supabase) are managed services on disciplined clocks; the worker's VPS is
the one that can drift. Shifting the worker by ±60 s therefore skews it against the producer and
the broker at once, which is what the signature tolerance and the leases must survive.

How (Debian's libfaketime 0.9.10, installed by `scripts/install-faketime`):
- `LD_PRELOAD` of libfaketimeMT (the thread-safe build; the worker runs hundreds of threads).
- The offset is read from `FAKETIME_TIMESTAMP_FILE`, re-read at most every second
  (`FAKETIME_CACHE_DURATION=1`), so a fault can step the clock of the running worker, as an NTP
  correction does.
- `FAKETIME_DONT_FAKE_MONOTONIC=1`: otherwise CLOCK_MONOTONIC is shifted too, and Python's
  timed lock waits (`sem_clockwait`, which libfaketime does not intercept) block for ever.
- `FAKETIME_FORCE_MONOTONIC_FIX=0`: libfaketime turns this fix on by itself on glibc 2.36, and
  with the monotonic clock left alone it then miscomputes every monotonic
  `pthread_cond_timedwait`, which is how a thread waits for Python's GIL: waiters spin, and a
  worker with 240 running jobs burned 7 times the CPU and let its leases lapse.
- `NO_FAKE_STAT=1`: file times stay real. Only the wall clock is under test, and gunicorn's
  arbiter compares its workers' heartbeat file mtimes with the monotonic clock.
- A `sitecustomize` that sleeps through `select()`: with the monotonic clock left alone,
  libfaketime 0.9.10 turns `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`, which Python 3.11's
  `time.sleep` uses, into a negative deadline and EINVAL (wolfcw/libfaketime#426), and gunicorn's
  arbiter sleeps while spawning workers. Nothing else of the worker is touched.

`WorkerClock.probe()` checks in a child process that `time.time()` really is shifted and that
sleeping works, before a scenario relies on it.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.stack.devstack import Component, Stack

SHIM = '''"""Loaded by `make chaos` into a worker under libfaketime (see scripts/chaos/clock.py).

libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 breaks clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME), which time.sleep uses (wolfcw/libfaketime#426). Sleep through select() instead.
"""

import select
import time


def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [], [], left)


time.sleep = _sleep
'''

LIB_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)


def find_library() -> str:
    """The thread-safe libfaketime; raises RuntimeError naming the installer when missing."""
    given = os.environ.get("FAKETIME_LIB", "")  # as scripts/install-faketime reads it
    if given:
        return given
    for pattern in LIB_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("libfaketime is not installed: run scripts/install-faketime")


class WorkerClock:
    """A wall-clock offset for the worker's processes, changeable while they run."""

    def __init__(self, directory: Path, offset: float) -> None:
        self.directory = directory
        self.library = find_library()
        self.rc_file = directory / "faketimerc"
        self.offset = 0.0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sitecustomize.py").write_text(SHIM)
        self.set(offset)

    def set(self, offset: float) -> None:
        """Step the worker's clock to real time + `offset` s (picked up within ~1 s)."""
        tmp = self.rc_file.with_suffix(".tmp")
        tmp.write_text(f"{offset:+.0f}\n")
        tmp.replace(self.rc_file)  # atomic: libfaketime never reads half a file
        self.offset = offset

    def environment(self, pythonpath: str) -> dict[str, str]:
        return {
            "LD_PRELOAD": self.library,
            "FAKETIME_TIMESTAMP_FILE": str(self.rc_file),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
            "NO_FAKE_STAT": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(self.directory), pythonpath) if p),
        }

    def wrap(self, argv: list[str], pythonpath: str) -> list[str]:
        """`argv` run through env(1) with libfaketime preloaded (env execs: same pid)."""
        assignments = [f"{k}={v}" for k, v in self.environment(pythonpath).items()]
        return ["/usr/bin/env", *assignments, *argv]

    def probe(self) -> float:
        """Run a child Python as the worker is run; return its measured clock offset (s).

        Raises RuntimeError when the offset is not applied or sleeping fails under it.
        """
        code = (
            "import time, threading\n"
            "time.sleep(0.05)\n"
            "threading.Event().wait(0.05)\n"
            "print(time.time())\n"
        )
        before = time.time()
        out = subprocess.run(  # noqa: S603 - our own interpreter and code
            self.wrap([sys.executable, "-c", code], ""),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        after = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"a Python under libfaketime failed: {out.stderr.strip()[-300:]}")
        measured = float(out.stdout.strip()) - (before + after) / 2
        if abs(measured - self.offset) > 2 + (after - before):
            raise RuntimeError(
                f"libfaketime did not shift the clock: {measured:+.1f}s, wanted {self.offset:+.0f}s"
            )
        return measured


@dataclass
class SkewedStack(Stack):
    """A `Stack` whose worker (gunicorn master and workers) runs on `clock`."""

    clock: WorkerClock | None = None
    _worker_pids: list[int] = field(default_factory=list)

    def _plan(self) -> list[Component]:
        plan = super()._plan()
        if self.clock is not None:
            for component in plan:
                if component.name == "worker":
                    component.argv = self.clock.wrap(component.argv, self.env["PYTHONPATH"])
        return plan

    def _spawn(self, component: Component) -> None:
        super()._spawn(component)
        if self.clock is not None and component.name == "worker" and component.proc:
            self._worker_pids.append(component.proc.pid)

    def stop(self) -> None:
        super().stop()
        # libfaketime's first process (the gunicorn master: env(1) execs it) creates a
        # semaphore and shared memory named by its pid and removes them at exit; a SIGKILLed
        # master leaves them behind, and a later process with that pid would trip on them.
        for pid in self._worker_pids:
            for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
                Path("/dev/shm", name).unlink(missing_ok=True)  # noqa: S108 - its names
