"""`make chaos`: fault injection under load on the real local stack, then invariants.

For each scenario, once per execution mode (`--mode inline|detached|both`, default both: the
worker's EXECUTION_MODE, `MODE_ENV` below; with both, the two modes run at the same time in
two child processes, each on its own Redis and Postgres, unless `--serial`: most of a scenario
is waiting on outages and streaming jobs, so the pair takes little longer than one mode), it
starts a fresh stack
(`scripts.stack.devstack.Stack`: offline LLM, dev broker, worker under gunicorn, producer) on the
run's own embedded Redis and Postgres, has many users submit a few hundred jobs that stream for
several seconds each, injects the scenario's fault
while they run, waits until every job is terminal (within the scenario's time budget), and
checks the invariants of `scripts.chaos.check` over Postgres and Redis. The clock-skew scenarios
run the worker under libfaketime (`scripts.chaos.clock`; `scripts/install-faketime` installs it).
It prints one row per scenario and exits 1 when any invariant was violated.

    .venv/bin/python -m scripts.chaos [--mode inline|detached|both] [--only NAME ...] [--jobs 240]
        [--users 60] [--list]

Logs of each scenario's components go to .devstack/chaos/<scenario>/; the figures of the last
run to .devstack/chaos/results-<mode>.json, each mode's output to .devstack/chaos/<mode>.log when
both run at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scripts.chaos.boxes import BOX_KILL_ENV, abandon_dead_box, kill_one_box
from scripts.chaos.check import check
from scripts.chaos.clock import SkewedStack, WorkerClock
from scripts.chaos.faults import (
    Duplicator,
    FaultContext,
    Infra,
    Schedule,
    broker_stats,
    cut_redis,
    llm_markers,
    no_fault,
    pause_redis,
    postgres_outage,
    redis_outage,
    restart_postgres,
    sigkill_twice,
    sigterm_once,
    wait_broker_idle,
)
from scripts.chaos.load import KINDS, PIPELINE_KINDS, LeaseWatch, Load, Marker, plan_jobs
from scripts.chaos.proxy import Proxy
from scripts.chaos.reconcile import RECONCILE_ENV, WORKERS_DOWN_ENV, broker_drops, workers_down
from scripts.chaos.skew import (
    Skew,
    check_skew,
    redrive_dead_letters,
    skewed,
    skewed_and_killed,
    step_after_dead_letters,
    step_after_refusals,
)
from scripts.stack.devstack import ROOT, Ports

OUT = ROOT / ".devstack" / "chaos"
# Seconds per execution mode in which scenarios may start (both modes run at once): a scenario
# starts while its mode has run less than this, and then has its own budget, so a mode ends
# within about 18.5 minutes (the longest budget is 150 s). Counting each budget in full before
# starting skipped the last scenario of a run that took 15 minutes (box-kill: 31 s of its 60).
TOTAL_BUDGET = 16 * 60

# Admission and coins sized so that every submit is admitted; the rest is the production shape
# at a realistic pace (25 tokens/s: a job streams for 10-25 s).
BASE_ENV = {
    "OPENAI_API_KEY": "",
    "QSTASH_URL": "",
    "QSTASH_MODE": "broker",
    "APP_ENV": "development",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "INITIAL_COINS": "100",
    "QUEUE_MAX_PAID": "5000",
    "QUEUE_MAX_FREE": "1000",
    "USER_MAX_ACTIVE_PAID": "10",
    "USER_MAX_ACTIVE_FREE": "5",
    "FREE_DAILY_JOBS": "100",
    "LLM_MAX_CONCURRENCY_PAID": "500",
    "LLM_MAX_CONCURRENCY_FREE": "500",
    # Limits by contract: config and the dev broker enforce none of a plan's (lib/queue/plans.py).
    "QSTASH_PLAN": "enterprise",
    "OFFLINE_LLM_TOKENS_PER_SECOND": "25",
    "JOB_RETRIES": "8",
    "JOB_RETRY_DELAY": "1000 + 1000 * retried",
    "DEV_BROKER_TIME_SCALE": "1",
    "LEASE_TTL_SECONDS": "10",
    "WORKER_DRAIN_SECONDS": "3",
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "256",
}


# EXECUTION_MODE=detached (lib/detached.py): after its 200 nothing but the worker's own
# re-publish or the reconciler moves a job, so the reconciler's schedule ticks every 6 s (a
# `* * * * *` cron at DEV_BROKER_TIME_SCALE 0.1, unless a scenario scales time itself). The retry
# delay is ten times BASE_ENV's in QStash's time, so its retries are as far apart in real time as
# inline's: at 0.1 with BASE_ENV's delay, a job's 8 retries were spent in 3.6 s, less than a
# SIGKILLed worker may take to come back on a loaded machine (jobs failed, never started).
DETACHED_ENV = {
    "EXECUTION_MODE": "detached",
    "RECONCILE_CRON": "* * * * *",
    "DEV_BROKER_TIME_SCALE": "0.1",
    "JOB_RETRY_DELAY": "10000 + 10000 * retried",
}
# Each mode says its EXECUTION_MODE: detached is the default, inline must be asked for.
MODE_ENV = {"inline": {"EXECUTION_MODE": "inline"}, "detached": DETACHED_ENV}
MODES = tuple(MODE_ENV)

# The outage scenarios run on QStash's own retry policy: the production retry count, its default
# backoff (no JOB_RETRY_DELAY), and the worker's outage answers carrying no Retry-After. At this
# scale, 5 minutes of QStash time are 6 s and the backoff is 0.24 s, 3 s, 36 s.
OUTAGE_ENV = {"JOB_RETRIES": "3", "JOB_RETRY_DELAY": "", "DEV_BROKER_TIME_SCALE": "0.02"}


@dataclass
class Scenario:
    name: str
    title: str
    schedule: Schedule
    budget: float  # seconds from the stack's start to the end of the drain
    overrides: dict[str, str] = field(default_factory=dict)
    marker: Marker | None = None
    duplicates: bool = False
    proxy: bool = False
    max_attempts: int | None = None
    skew: Skew | None = None  # the worker runs under libfaketime
    after_drain: Schedule | None = None  # a step once every job ended (e.g. a DLQ redrive)
    # A step once every job ended, before the broker must be idle (retire a dead box).
    before_idle: Schedule | None = None
    kinds: tuple[str, ...] = KINDS  # the mix of kinds submitted


def _all_fail(index: int, rng: random.Random) -> tuple[str, str]:
    return "", "failed"


SCENARIOS = [
    Scenario("sigkill", "worker SIGKILLed twice", sigkill_twice, 130),
    Scenario("sigterm", "worker SIGTERM, then restart", sigterm_once, 110),
    # Pipelines (match_from_image: four steps, four messages each) among plain jobs, the worker
    # SIGKILLed twice mid-run: each step resumes where it stood, each job is charged once. A kill
    # between a step's end and the publish of the next step loses that message: the reconciler
    # re-publishes it, so it runs here as in broker-drop (its thresholds scaled down), with the
    # retries as far apart in real time as BASE_ENV's.
    Scenario(
        "pipeline",
        "pipelines among jobs, worker SIGKILLed twice",
        sigkill_twice,
        130,
        overrides={
            **RECONCILE_ENV,
            "JOB_RETRY_DELAY": "20000 + 20000 * retried",
            "OFFLINE_LLM_TOKENS_PER_SECOND": "60",
        },
        kinds=PIPELINE_KINDS,
    ),
    Scenario("redis-pause", "Redis SIGSTOP 5 s", pause_redis, 100),
    Scenario("redis-cut", "Redis connections cut (proxy)", cut_redis, 100, proxy=True),
    Scenario("pg-restart", "Postgres restarted mid-run", restart_postgres, 100),
    Scenario(
        "redis-outage",
        "Redis down 5 min of QStash time",
        redis_outage,
        150,
        overrides=OUTAGE_ENV,
        proxy=True,
    ),
    Scenario(
        "pg-outage",
        "Postgres down 5 min of QStash time",
        postgres_outage,
        150,
        overrides=OUTAGE_ENV,
    ),
    Scenario(
        "redeliver",
        "2-5 deliveries per message",
        no_fault,
        100,
        overrides={"JOB_RETRIES": "3"},  # the production default: busy answers use it up
        duplicates=True,
        max_attempts=1,
    ),
    Scenario(
        "llm-faults",
        "LLM 503 once, 500 always, hangs",
        no_fault,
        110,
        overrides={"LLM_READ_TIMEOUT_SECONDS": "3", "JOB_RETRIES": "3"},
        marker=llm_markers,
    ),
    # Clock skew: only the worker's clock moves (scripts/chaos/clock.py). A signature is valid
    # from its `nbf` (the broker's now) for 5 minutes, so a fast worker is within it at any
    # tolerance while a slow one needs QSTASH_CLOCK_TOLERANCE_SECONDS above its lag.
    Scenario(
        "skew-ahead",
        "worker clock +60 s (tolerance 30 s), SIGKILL once",
        skewed_and_killed,
        110,
        skew=Skew(60, ends_at=60, refused=False),
    ),
    Scenario(
        "skew-behind",
        "worker clock -60 s, tolerance 90 s",
        skewed,
        100,
        overrides={"QSTASH_CLOCK_TOLERANCE_SECONDS": "90"},
        skew=Skew(-60, ends_at=-60, refused=False),
        max_attempts=1,
    ),
    Scenario(
        "skew-refused",
        "worker clock -60 s > tolerance 30 s, then corrected",
        step_after_refusals,
        120,
        overrides={"JOB_RETRIES": "12"},  # the refusals must not use up the retries
        skew=Skew(-60, ends_at=0, refused=True),
        max_attempts=1,
    ),
    Scenario(
        "skew-dlq",
        "worker clock -60 s through every retry, then DLQ redrive",
        step_after_dead_letters,
        100,
        # The production retry count; the dev broker's backoff scaled so that the failure
        # callbacks' second retry (30 s instead of 148 s) comes after the correction.
        overrides={"JOB_RETRIES": "3", "DEV_BROKER_TIME_SCALE": "0.2"},
        skew=Skew(-60, ends_at=0, refused=True),
        marker=_all_fail,
        after_drain=redrive_dead_letters,
        max_attempts=0,
    ),
    # Healed by the reconciler alone (scripts/chaos/reconcile.py).
    Scenario("broker-drop", "broker loses 20 accepted messages", broker_drops, 110, RECONCILE_ENV),
    Scenario(
        "workers-down",
        "every worker down 10 min of QStash time",
        workers_down,
        150,
        WORKERS_DOWN_ENV,
    ),
    # Scale-out (scripts/chaos/boxes.py): the reconciler moves a dead box's jobs to the other.
    Scenario(
        "box-kill",
        "1 of 2 worker boxes SIGKILLed for good",
        kill_one_box,
        60,
        BOX_KILL_ENV,
        before_idle=abandon_dead_box,
    ),
]


@dataclass
class Row:
    scenario: str
    title: str
    accepted: int = 0
    submitted: int = 0
    peak_running: int = 0
    faults: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


def run_scenario(
    sc: Scenario, infra: Infra, args: argparse.Namespace, seed: int, mode: str = "inline"
) -> Row:
    name = sc.name if mode == "inline" else f"{sc.name}/detached"
    row = Row(name, sc.title)
    started = time.monotonic()
    deadline = started + sc.budget
    rng = random.Random(seed)
    proxy = None
    redis_url = infra.redis_url
    if sc.proxy:
        target = urlsplit(infra.redis_url)
        proxy = Proxy(target.hostname or "127.0.0.1", target.port or 6379).start()
        redis_url = proxy.url
    prefix = f"chaos-{sc.name}-{mode[0]}-{uuid.uuid4().hex[:6]}:"
    ports = Ports.free()
    overrides = {
        **BASE_ENV,
        "REDIS_URL": redis_url,
        "DATABASE_URL": infra.database_url,
        "REDIS_PREFIX": prefix,
        **MODE_ENV[mode],
        **sc.overrides,
        **dict(item.split("=", 1) for item in args.set or []),
    }
    log_dir = OUT / (sc.name if mode == "inline" else f"{sc.name}-detached")
    for old in log_dir.glob("*.log"):
        old.unlink()
    clock = WorkerClock(log_dir / "faketime", sc.skew.offset) if sc.skew else None
    stack = SkewedStack(ports=ports, overrides=overrides, log_dir=log_dir, quiet=True, clock=clock)
    plans = plan_jobs(args.jobs, args.users, rng, marker=sc.marker, kinds=sc.kinds)
    load = Load(stack.producer_url, plans, infra.database_url)
    leases = LeaseWatch(infra.redis_url, prefix).start()
    duplicator: Duplicator | None = None
    ctx: FaultContext | None = None
    try:
        probe = clock.probe() if clock else 0.0
        stack.start()
        ctx = FaultContext(stack, infra, load, proxy, clock)
        if clock:
            ctx.note(f"worker clock {clock.offset:+.0f}s (a child measured {probe:+.1f}s)")
        fault = threading.Thread(target=_guarded, args=(sc.schedule, ctx), daemon=True)
        duplicator = Duplicator(stack, stack.env, rng) if sc.duplicates else None
        fault.start()
        marked = Counter(m.group(1) for p in plans if (m := _MARKER.search(p.marker)))
        if marked:
            ctx.note(", ".join(f"{n} x {name}" for name, n in sorted(marked.items())))
        load.run(on_accepted=duplicator)
        say(
            f"{sc.name}: {len(load.accepted())}/{len(plans)} accepted in "
            f"{load.submit_seconds:.1f}s; draining"
        )
        drained = load.drain(max(1.0, deadline - time.monotonic()))
        fault.join(max(1.0, deadline - time.monotonic()))
        if duplicator:
            duplicator.close()
            ctx.injected.append(duplicator.summary())
            ctx.errors += duplicator.failures[:3]
        pending = _settle_broker(sc, ctx, deadline, drained)
        load.join_clients(10)
        if not drained:
            row.violations.append(f"not drained within {sc.budget:.0f}s: {load.monitor.counts}")
        if fault.is_alive():
            row.violations.append("the fault schedule did not finish within the budget")
        if pending:
            row.violations.append(f"the broker still had {pending} messages to deliver")
        _judge(row, sc, ctx, leases, prefix, float(overrides["LEASE_TTL_SECONDS"]))
        row.violations += [f"fault schedule error: {e}" for e in ctx.errors]
    except Exception as exc:  # noqa: BLE001 - a crashed scenario is a failed scenario
        row.violations.append(f"the scenario crashed: {type(exc).__name__}: {exc}")
    finally:
        row.faults = ctx.injected if ctx else []
        row.accepted = len(load.accepted())
        row.submitted = len(plans)
        row.peak_running = load.monitor.peak_running
        load.close()
        leases.stop()
        stack.stop()
        if proxy:
            proxy.stop()
    row.seconds = round(time.monotonic() - started, 1)
    _evidence(row, log_dir)
    return row


def _settle_broker(sc: Scenario, ctx: FaultContext, deadline: float, drained: bool) -> int | None:
    """The scenario's steps around the broker's drain; returns what the broker still holds."""
    if sc.before_idle and drained:
        _guarded(sc.before_idle, ctx)
    pending = wait_broker_idle(ctx.stack, max(deadline, time.monotonic() + 15))
    if sc.after_drain and not pending:
        _guarded(sc.after_drain, ctx)
    return pending


def _judge(
    row: Row, sc: Scenario, ctx: FaultContext, leases: LeaseWatch, prefix: str, lease_s: float
) -> None:
    """The invariants over Postgres and Redis, plus the scenario's own, into `row`."""
    client = ctx.infra.client()
    try:
        report = check(
            ctx.infra.database_url, client, prefix, ctx.load, max_attempts=sc.max_attempts
        )
        row.violations += report.violations
        row.stats = {
            **report.stats,
            "broker": broker_stats(ctx.stack),
            "lease_min_ttl_ms": leases.min_ms,
            "lease_max_ttl_ms": leases.max_ms,
            "lease_samples_below_1s": f"{leases.below_1s}/{leases.samples}",
            "admission_deadline_ahead_max_s": leases.admission_ahead_s,
        }
        # Leases are set with a relative TTL on Redis's clock: none may ever hold longer.
        if leases.max_ms is not None and leases.max_ms > lease_s * 1000:
            row.violations.append(
                f"a lease had {leases.max_ms} ms left, more than its TTL of {lease_s:.0f} s"
            )
        if sc.skew and sc.max_attempts != 0 and not leases.samples:
            row.violations.append("no lease was ever seen held while jobs ran")
        if sc.skew:
            ids = [s.job_id for s in ctx.load.accepted() if s.job_id]
            problems, clock_stats = check_skew(sc.skew, ctx.stack, client, prefix, ids)
            row.violations += problems
            row.stats |= clock_stats
    finally:
        client.close()


def _guarded(schedule: Schedule, ctx: FaultContext) -> None:
    try:
        schedule(ctx)
    except Exception as exc:  # noqa: BLE001 - reported as a violation
        ctx.errors.append(f"{type(exc).__name__}: {exc}")


_MARKER = re.compile(r"\[\[llm:([a-z_]+)")
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _evidence(row: Row, log_dir: Path) -> None:
    """For the first jobs named in violations, keep their log lines in evidence.txt."""
    ids = list(dict.fromkeys(m for v in row.violations for m in _JOB_ID.findall(v)))[:5]
    if not ids:
        return
    lines = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if any(job_id in line for job_id in ids):
                lines.append(f"{path.stem}: {line}")
    (log_dir / "evidence.txt").write_text("\n".join(lines) + "\n")


def print_table(rows: list[Row]) -> None:
    width = 52
    head = (
        f"{'scenario':<12} {'jobs':>5} {'peak':>5} {'retried':>7}  {'faults injected':<{width}}"
        f" {'viol.':>5} {'secs':>6}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for row in rows:
        faults = "; ".join(row.faults) or "-"
        retried = row.stats.get("retried", "-")
        print(
            f"{row.scenario:<12} {row.accepted:>5} {row.peak_running:>5} {retried:>7}"
            f"  {faults[:width]:<{width}} {len(row.violations):>5} {row.seconds:>6.1f}"
        )
        for extra in _wrap(faults[width:], width):
            print(f"{'':<34}{extra}")
    print("(jobs: accepted; peak: most running at once; retried: jobs that took > 1 attempt)")
    for row in rows:
        for kind, examples in kinds_of(row.violations).items():
            print(f"  {row.scenario}: {len(examples)} x {kind}")
            for example in list(dict.fromkeys(examples))[:2]:
                print(f"      e.g. {example}")


def kinds_of(violations: list[str]) -> dict[str, list[str]]:
    """Group violations by their text with ids and figures blanked, most frequent first."""
    groups: dict[str, list[str]] = {}
    for text in violations:
        kind = re.sub(r"\d+(\.\d+)?", "N", _JOB_ID.sub("<id>", text))
        groups.setdefault(kind, []).append(text)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


def machine() -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "mem_total_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _plain(value: Any) -> Any:
    """JSON-ready: mapping keys become strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.chaos", description=__doc__)
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    parser.add_argument("--jobs", type=int, default=240, help="jobs per scenario")
    parser.add_argument("--users", type=int, default=60, help="users per scenario")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="EXECUTION_MODE of the worker: each scenario runs once per mode (default both)",
    )
    parser.add_argument(
        "--serial", action="store_true", help="with --mode both, one mode after the other"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a stack setting"
    )
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if args.list or not chosen:
        for sc in SCENARIOS:
            print(f"{sc.name:<12} {sc.title} (budget {sc.budget:.0f}s)")
        return 0 if args.list else 2
    OUT.mkdir(parents=True, exist_ok=True)
    if args.mode == "both" and not args.serial:
        return _both_at_once(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    infra = Infra().start()
    say(f"own Redis {infra.redis_url}, own Postgres in {infra.pgdata}")
    rows = []
    modes = MODES if args.mode == "both" else (args.mode,)
    runs = [(i, sc, mode) for mode in modes for i, sc in enumerate(chosen)]
    try:
        for i, sc, mode in runs:
            if time.monotonic() - started >= TOTAL_BUDGET * len(modes):
                name = sc.name if mode == "inline" else f"{sc.name}/detached"
                rows.append(Row(name, sc.title, violations=["not run: out of total time"]))
                continue
            say(f"{sc.name} ({mode}): {sc.title} ({args.jobs} jobs, budget {sc.budget:.0f}s)")
            rows.append(run_scenario(sc, infra, args, args.seed + i, mode))
            last = rows[-1]
            say(f"{last.scenario}: {len(last.violations)} violation(s) in {last.seconds}s")
    finally:
        infra.stop()
    total = round(time.monotonic() - started, 1)
    print_table(rows)
    print(f"total {total}s")
    results = {"meta": {**machine(), "total_seconds": total}, "rows": [asdict(r) for r in rows]}
    name = "results.json" if args.mode == "both" else f"results-{args.mode}.json"
    (OUT / name).write_text(json.dumps(_plain(results), indent=1, default=str) + "\n")
    return 1 if any(r.violations for r in rows) else 0


def _both_at_once(argv: list[str]) -> int:
    """Run each execution mode in a child process of its own, at the same time; print each
    one's output once it ends; fail when either fails."""
    rest = [a for a in argv if not a.startswith("--mode")]
    if "--mode" in argv:  # `--mode both` as two words: drop its value too
        i = argv.index("--mode")
        rest = argv[:i] + argv[i + 2 :]
    started = time.monotonic()
    children = {}
    for mode in MODES:
        log = (OUT / f"{mode}.log").open("w")
        cmd = [sys.executable, "-m", "scripts.chaos", "--mode", mode, *rest]
        children[mode] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        say(f"{mode} mode: started (output in {OUT / f'{mode}.log'})")
    codes = {}
    for mode, (child, log) in children.items():
        codes[mode] = child.wait()
        log.close()
    for mode in MODES:
        print(f"\n===== {mode} mode (exit {codes[mode]}) =====")
        print((OUT / f"{mode}.log").read_text(), end="")
    print(f"\nboth modes: {round(time.monotonic() - started, 1)}s in all")
    return 1 if any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
