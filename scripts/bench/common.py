"""What every section of `make bench` shares: prices, the two configurations, the stack of one
configuration (`Bench`), and small figures helpers."""

from __future__ import annotations

import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET
from lib.queue.signing import DEV_TOKEN
from scripts.bench.procs import group_pids, pct, rss_kb
from scripts.stack import embedded
from scripts.stack.devstack import ROOT, Ports, Stack

# The sample job and the free-port and WSGI helpers of the test suite (re-exported).
sys.path.insert(0, str(ROOT / "tests"))
from helpers.net import free_port as free_port  # noqa: E402
from helpers.net import serve_wsgi as serve_wsgi  # noqa: E402
from helpers.stack import JD, RESUME  # noqa: E402

OUT = ROOT / "bench"
# List prices, as published on the vendors' pricing pages on the date below (docs/performance.md).
UPSTASH_PER_100K_COMMANDS = 0.20
QSTASH_PER_100K_MESSAGES = 1.00
PRICES = {
    "date": "2026-11-29",
    "upstash_redis_per_100k_commands": UPSTASH_PER_100K_COMMANDS,
    "qstash_per_100k_messages": QSTASH_PER_100K_MESSAGES,
}
# Both configurations get the same limits, sized so that the bench never hits them.
COMMON = {
    # Said explicitly (detached is the default): the sections measure inline, QStash holding
    # each delivery for its job, as they always have; `live_jobs` and `queue_eta` set their own.
    "EXECUTION_MODE": "inline",
    "INITIAL_COINS": "1000000",
    "USER_MAX_ACTIVE_PAID": "1000",
    "QUEUE_MAX_PAID": "1000000",
    "LLM_MAX_CONCURRENCY_PAID": "5000",
    # Limits by contract: config and the dev broker enforce none of a plan's (lib/queue/plans.py).
    "QSTASH_PLAN": "enterprise",
    "GUNICORN_THREADS": "320",
    "PRODUCER_THREADS": "640",
    "WORKER_DRAIN_SECONDS": "2",
    "JOB_RETRY_DELAY": "1000",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "WARNING",
    # The stacks share one database: a reconciler would take the others' running jobs for dead
    # (it sees no lease under its own REDIS_PREFIX). Its schedule's deliveries and its Redis
    # commands are also a cost per minute of a deployment, not per job.
    "RECONCILE_CRON": "",
}
OURS: dict[str, str] = {}  # the defaults
BASELINE = {
    "SSE_READ_MODE": "poll",
    "DELTA_FLUSH_MS": "20",
    "DELTA_FLUSH_IDLE_MS": "20",
    "DELTA_FLUSH_TOKENS": "5",
    "EVENTS_PUBLISH": "false",
}
TARGETS = {
    "p99_added_latency_ms_at_100_streams": 250,
    "live_jobs_per_2_core_worker": 1000,
    "worker_rss_gib": 1.0,
    "submit_p50_ms_server": 10,
    "jobs_per_second_instant_llm": 200,
    "api_cold_import_ms": 300,
    "commands_per_job_no_viewer": 45,
    "commands_per_flush_one_viewer": 2,
    "cancel_to_close_p99_ms": 1000,
    "usd_per_1000_jobs_no_viewer": 0.10,
    "qstash_messages_per_successful_job": 1,
}
# The result keys of the sections (`--only` names them: cold, parse, cost, latency, ...).
SECTIONS = {
    "cold_start",
    "cold_start_production",
    "llm_parse",
    "token_cpu",
    "cost",
    "cancel",
    "sweep",
    "latency",
    "submit",
    "concurrency",
    "boxes",
    "image_submit",
    "live_jobs",
    "queue_eta",
}
API_FUNCTIONS = ["api.jobs", "api.events", "api.me", "api.health", "api.openapi"]


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def dist(values: list[float], scale: float = 1.0) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {"n": len(values)}
    for q in (50, 90, 99):
        v = pct(values, q)
        out[f"p{q}"] = None if v is None else round(v * scale, 2)
    return out


def ratio(baseline: float | None, ours: float | None) -> float | None:
    """How many times better ours is (baseline / ours); > 1 means ours is lower."""
    if not baseline or not ours:
        return None
    return round(baseline / ours, 2)


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "info"}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}


def dollars_per_1000(commands: float, messages: float) -> float:
    per_job = (
        commands * UPSTASH_PER_100K_COMMANDS / 100_000
        + messages * QSTASH_PER_100K_MESSAGES / 100_000
    )
    return round(per_job * 1000, 4)


# The stack ------------------------------------------------------------------------------------
@dataclass
class Bench:
    """One configuration of the local stack, on a Redis of its own and the shared Postgres."""

    name: str
    overrides: dict[str, str]
    database_url: str
    stack: Stack | None = None
    redis_server: embedded.Embedded | None = None

    def start(self) -> Bench:
        self.redis_server = embedded.start_redis()
        ports = Ports(
            producer=free_port(),
            worker=free_port(),
            broker=free_port(),
            llm=free_port(),
            worker2=free_port(),
            storage=free_port(),
        )
        env = {
            **COMMON,
            **self.overrides,
            "REDIS_URL": self.redis_server.url,
            "DATABASE_URL": self.database_url,
            "REDIS_PREFIX": f"bench-{self.name}:",
        }
        self.stack = Stack(ports=ports, overrides=env, quiet=True, log_dir=OUT / "logs" / self.name)
        self.stack.start(timeout=120)
        return self

    def stop(self) -> None:
        if self.stack:
            self.stack.stop()
        if self.redis_server:
            self.redis_server.stop()

    @property
    def url(self) -> str:
        assert self.stack
        return self.stack.producer_url

    def redis(self) -> redis.Redis:
        assert self.redis_server
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def broker_stats(self) -> dict[str, int]:
        assert self.stack
        answer = httpx.get(
            f"{self.stack.broker_url}/v2/_dev/stats",
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
            timeout=10,
        )
        return dict(answer.json())

    def worker_rss_mb(self) -> float:
        assert self.stack
        proc = self.stack.component("worker").proc
        assert proc
        return round(sum(rss_kb(pid) for pid in group_pids(proc.pid)) / 1024, 1)


def start_all(benches: list[Bench]) -> list[Bench]:
    with ThreadPoolExecutor(len(benches)) as pool:
        list(pool.map(Bench.start, benches))
    return benches


def new_user() -> tuple[str, dict[str, str]]:
    user = str(uuid.uuid4())
    return user, {"Authorization": f"Bearer {mint_access_token(user, DEV_JWT_SECRET)}"}


def body(markers: str, kind: str = "job_match") -> dict[str, Any]:
    return {"kind": kind, "input": {"resume_text": f"{RESUME} {markers}", "job_description": JD}}


def is_terminal(event: str, data: dict[str, Any]) -> bool:
    return event == "status" and data.get("status") in ("succeeded", "failed", "cancelled")


# QStash messages, from the dev broker's log -------------------------------------------------
_BROKER_LINE = re.compile(r" (publish|deliver) msg=\S+ dest=\S+?(/v1/\w+|/api/\w+)(?:\s|$)")


class BrokerLog:
    """Counts the dev broker's publishes and delivery attempts by destination path (e.g.
    `/v1/execute`, `/v1/failed`, `/api/reconcile`) from the moment `mark()` was called. The log
    is read, not the broker's counters, so that a bench can tell the publishes to the worker
    (one per job, plus waits and retries) from the rest; stacks append to their logs, so only
    what follows the mark counts. Deduplicated publishes are not in the log (QStash does not
    deliver them)."""

    def __init__(self, bench: Bench) -> None:
        assert bench.stack
        self.bench = bench
        self.path = OUT / "logs" / bench.name / "broker.log"
        self.offset = 0

    def mark(self) -> BrokerLog:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def settle(self, timeout: float) -> bool:
        """Wait until the broker holds no message still to deliver (delayed ones included:
        a detached wait's timer message is delivered, and billed, after the job ran), or
        `timeout` s. Returns whether it settled."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.bench.broker_stats()
            ended = n.get("delivered", 0) + n.get("failed", 0) + n.get("cancelled", 0)
            if ended >= n.get("published", 0) + n.get("callbacks", 0):
                return True
            time.sleep(0.5)
        return False

    def counts(self) -> dict[str, dict[str, int]]:
        """{"publish": {path: n}, "deliver": {path: n}} since the mark."""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        out: dict[str, dict[str, int]] = {"publish": {}, "deliver": {}}
        for what, path in _BROKER_LINE.findall(text):
            out[what][path] = out[what].get(path, 0) + 1
        return out
