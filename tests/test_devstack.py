"""`make dev` as a supervisor, on real processes: Ctrl-C stops everything within seconds even with
a job running, a second Ctrl-C kills at once, and a killed supervisor takes its children along.

Every process of a stack under test carries a marker in its environment (inherited by the
components, gunicorn's workers, the embedded Redis and the Postgres that pg_ctl detaches), so the
test finds all of them in /proc and nothing that belongs to another stack on the machine. Valkey
alone overwrites its environment with its process title: it is found by the port it serves.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.net import wait_for
from helpers.stack import RESUME, User

from scripts.stack.devstack import ROOT

MARK = "CS_DEVSTACK_TEST_MARK"
# Settings that would point the stack at outside servers instead of its own children.
OUTSIDE = ("REDIS_URL", "DATABASE_URL", "UPSTASH_REDIS_REST_URL", "SUPABASE_URL", "QSTASH_URL")


@dataclass
class Supervisor:
    proc: subprocess.Popen[bytes]
    mark: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def producer_url(self) -> str:
        found = re.search(r"ready \(local profile\): producer (\S+),", self.output())
        return found.group(1) if found else ""

    def processes(self) -> dict[int, str]:
        """Every live process of this stack (zombies count as gone): pid -> command line."""
        needle = f"{MARK}={self.mark}".encode()
        redis = re.search(r"embedded Redis at redis://(127\.0\.0\.1:\d+)/", self.output())
        title = f"valkey-server {redis.group(1)}".encode() if redis else b"-"
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if (needle in environ or title in argv) and state != "Z":
                found[int(entry)] = argv.decode(errors="replace")
        return found


@pytest.fixture
def supervisor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Supervisor]:
    """`python -m scripts.stack.devstack dev` with embedded servers, ready, in its own session."""
    args: list[str] = getattr(request, "param", [])
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE and k != "OPENAI_API_KEY"}
    env[MARK] = uuid.uuid4().hex
    env["WORKER_DRAIN_SECONDS"] = "120"  # a draining worker would hold the stop for minutes
    log = tmp_path / "devstack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "scripts.stack.devstack", "dev", "--free-ports", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sup = Supervisor(proc, env[MARK], log)
    try:
        wait_for(lambda: sup.producer_url() or proc.poll() is not None, 120, 0.1, "ready")
        assert proc.poll() is None, sup.output()
        yield sup
    finally:
        for pid in sup.processes():  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)


def start_a_long_job(sup: Supervisor) -> None:
    user = User(sup.producer_url())
    answer = user.submit("job_match", resume=RESUME + " [[llm:slow=1000]]")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job"]["id"]
    wait_for(lambda: user.job(job_id)["status"] == "running", 60, 0.1, "the job to run")


def kinds(processes: dict[int, str]) -> set[str]:
    words = ("valkey", "postgres", "offline_llm", "dev_broker", "worker.wsgi", "api._local")
    return {word for word in words for argv in processes.values() if word in argv}


def test_ctrl_c_stops_every_process_within_seconds_with_a_job_running(
    supervisor: Supervisor,
) -> None:
    start_a_long_job(supervisor)
    assert kinds(supervisor.processes()) == {
        "valkey",
        "postgres",
        "offline_llm",
        "dev_broker",
        "worker.wsgi",
        "api._local",
    }
    started = time.monotonic()
    supervisor.proc.send_signal(signal.SIGINT)
    assert supervisor.proc.wait(10) == 0, supervisor.output()
    wait_for(lambda: not supervisor.processes(), 10, 0.05, "every process to end")
    assert time.monotonic() - started < 10
    assert "stopped" in supervisor.output()


@pytest.mark.parametrize("supervisor", [["--stop-grace", "120"]], indirect=True)
def test_a_second_ctrl_c_kills_everything_at_once(supervisor: Supervisor) -> None:
    start_a_long_job(supervisor)
    supervisor.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping" in supervisor.output(), 10, 0.05, "the first Ctrl-C")
    # The worker drains the running job: with a 120 s grace the stop would wait for it.
    assert supervisor.proc.poll() is None
    started = time.monotonic()
    supervisor.proc.send_signal(signal.SIGINT)
    assert supervisor.proc.wait(10) == 128 + signal.SIGINT, supervisor.output()
    wait_for(lambda: not supervisor.processes(), 10, 0.05, "every process to end")
    assert time.monotonic() - started < 10


def test_a_killed_supervisor_takes_every_child_with_it(supervisor: Supervisor) -> None:
    children = supervisor.processes()
    assert {"valkey", "postgres", "worker.wsgi"} <= kinds(children)
    supervisor.proc.kill()
    supervisor.proc.wait(5)
    wait_for(lambda: not supervisor.processes(), 10, 0.05, "every orphan to end")
