"""`make chaos`: fault injection under load on the real local stack, then invariants.

For each scenario, once per execution mode (`--mode inline|detached|both`, default both: the
worker's EXECUTION_MODE, `scenarios.MODE_ENV`; with both, the two modes run at the same time in
two child processes, each on its own Redis and Postgres, unless `--serial`: most of a scenario
is waiting on outages and streaming jobs, so the pair takes little longer than one mode), it
starts a fresh stack
(`scripts.stack.devstack.Stack`: offline LLM, dev broker, worker under gunicorn, producer) on the
run's own embedded Redis and Postgres, has many users submit a few hundred jobs that stream for
several seconds each, injects the scenario's fault
while they run, waits until every job is terminal (within the scenario's time budget), and
checks the invariants of `scripts.chaos.check` over Postgres and Redis. The clock-skew scenarios
run the worker under libfaketime (`scripts.chaos.clock`; `scripts/install-faketime` installs it).
It prints one row per scenario and exits 1 when any invariant was violated. The scenarios and the
settings they run with are `scripts.chaos.scenarios`; the table and figures, `scripts.chaos.report`.

    .venv/bin/python -m scripts.chaos [--mode inline|detached|both] [--only NAME ...] [--jobs 240]
        [--users 60] [--list]

Logs of each scenario's components go to .devstack/chaos/<scenario>/; the figures of the last
run to .devstack/chaos/results-<mode>.json, each mode's output to .devstack/chaos/<mode>.log when
both run at once.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict
from urllib.parse import urlsplit

from scripts.chaos.check import check
from scripts.chaos.clock import SkewedStack, WorkerClock
from scripts.chaos.faults import (
    Duplicator,
    FaultContext,
    Infra,
    Schedule,
    broker_stats,
    wait_broker_idle,
)
from scripts.chaos.load import LeaseWatch, Load, plan_jobs
from scripts.chaos.proxy import Proxy
from scripts.chaos.report import Row, evidence, machine, plain, print_table
from scripts.chaos.scenarios import BASE_ENV, MODE_ENV, MODES, SCENARIOS, Scenario
from scripts.chaos.skew import check_skew
from scripts.stack.devstack import ROOT, Ports

OUT = ROOT / ".devstack" / "chaos"


# Seconds per execution mode in which scenarios may start (both modes run at once): a scenario
# starts while its mode has run less than this, and then has its own budget, so a mode ends
# within about 18.5 minutes (the longest budget is 150 s). Counting each budget in full before
# starting skipped the last scenario of a run that took 15 minutes (box-kill: 31 s of its 60).
TOTAL_BUDGET = 16 * 60


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
    evidence(row, log_dir)
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
    (OUT / name).write_text(json.dumps(plain(results), indent=1, default=str) + "\n")
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
