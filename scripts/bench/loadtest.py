"""Load test: many users submitting at once against a running producer, then the invariants.

    python -m scripts.bench.loadtest                      # starts a local stack (like `make dev`)
    python -m scripts.bench.loadtest --base-url URL ...   # against a running producer

`--clients` threads, one per user (`--users`), share `--submits` submits. Each submit is a
random kind with tier `auto` (sometimes `paid` or `free`), and sometimes a repeat of the user's
previous request under the same Idempotency-Key. Then every accepted job is polled to a
terminal state within `--drain-timeout`, and the run checks:

- no 5xx, and every refusal is 429 (`backpressure`, `user_concurrency` or `rate_limited`, with
  `Retry-After`) or 402 `quota_exhausted`;
- an Idempotency-Key repeat returns the first job;
- every user's coins are INITIAL_COINS minus the cost of their succeeded paid jobs, their free
  jobs left are FREE_DAILY_JOBS minus their succeeded free jobs, and none is active;
- with `--redis-url`, the admission counters (`live` of each tier) are back to zero.

It prints a summary (answers per status and code, submit latency p50/p99, final job states) and
exits 1 on any violation. The simulated user is scripts/bench/loadtest_client.py.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scripts.bench.loadtest_client import Client, Submit

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


REFUSALS = {
    429: {"backpressure", "user_concurrency", "rate_limited"},
    402: {"quota_exhausted"},
}


# The SPEC's limits: a local stack for the load test runs with exactly these.
SPEC_LIMITS = {
    "QUEUE_MAX_FREE": "20",
    "QUEUE_MAX_PAID": "100",
    "USER_MAX_ACTIVE_FREE": "1",
    "USER_MAX_ACTIVE_PAID": "3",
    "FREE_DAILY_JOBS": "3",
    "INITIAL_COINS": "5",
}


@dataclass
class Report:
    submits: list[Submit] = field(default_factory=list)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> job
    owner: dict[str, str] = field(default_factory=dict)  # job id -> user
    me: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> /api/me
    live: dict[str, int] = field(default_factory=dict)  # tier -> admission count after drain
    violations: list[str] = field(default_factory=list)
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0

    def latency(self, q: float) -> float:
        times = sorted(s.seconds for s in self.submits)
        return times[min(len(times) - 1, int(q * len(times)))] if times else 0.0

    def summary(self) -> str:
        answers = Counter(f"{s.status} {s.code}".strip() for s in self.submits)
        finals = Counter(f"{j['tier']} {j['status']}" for j in self.final.values())
        rate = len(self.submits) / self.submit_seconds if self.submit_seconds else 0.0
        lines = [
            f"submits: {len(self.submits)} in {self.submit_seconds:.1f} s ({rate:.0f}/s); "
            f"latency p50 {self.latency(0.5) * 1000:.0f} ms, p99 {self.latency(0.99) * 1000:.0f} ms"
            f", mean {statistics.fmean(s.seconds for s in self.submits) * 1000:.0f} ms"
            if self.submits
            else "submits: 0",
            "answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())),
            f"jobs: {len(self.final)}, drained in {self.drain_seconds:.1f} s: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(finals.items())),
            "admission after drain: " + ", ".join(f"{k}={v}" for k, v in sorted(self.live.items())),
            f"violations: {len(self.violations)}",
            *(f"  - {v}" for v in self.violations[:20]),
        ]
        return "\n".join(lines)


def check_answer(submit: Submit) -> str | None:
    """The violation in one answer, if any."""
    if submit.status in (200, 202):
        if submit.job is None:
            return f"{submit.status} without a job"
        if submit.replay_of is None:
            return None if submit.status == 202 else "200 for a new Idempotency-Key"
        if (submit.status, submit.job["id"]) != (200, submit.replay_of):
            return f"an Idempotency-Key repeat got {submit.status} {submit.job['id']}"
        return None
    expected = REFUSALS.get(submit.status)
    if expected is None:
        return f"unexpected {submit.status} {submit.code}"
    if submit.code not in expected:
        return f"{submit.status} with code {submit.code!r}"
    if submit.status == 429 and not (submit.retry_after or "").isdigit():
        return f"429 {submit.code} without a Retry-After"
    return None


def run(
    base_url: str,
    *,
    submits: int = 1000,
    clients: int = 100,
    users: int = 100,
    initial_coins: int = 5,
    free_daily_jobs: int = 3,
    replay_share: float = 0.1,
    think_ms: int = 3000,
    drain_timeout: float = 120.0,
    live_counts: Callable[[], dict[str, int]] | None = None,
    seed: int = 1,
) -> Report:
    """Run the load and the checks. `live_counts` reads the admission counters per tier."""
    report = Report()
    rng = random.Random(seed)
    day = datetime.now(UTC).date()
    people = [
        Client(base_url, str(uuid.uuid4()), random.Random(rng.random())) for _ in range(users)
    ]
    order = [people[i % users] for i in range(submits)]
    rng.shuffle(order)
    next_submit = iter(order)
    take = threading.Lock()

    def work() -> list[Submit]:
        done: list[Submit] = []
        while True:
            with take:
                person = next(next_submit, None)
            if person is None:
                return done
            done.append(person.submit(replay_share))
            if think_ms:
                time.sleep(person.rng.uniform(0, think_ms) / 1000)  # load shaping only

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            for batch in [pool.submit(work) for _ in range(clients)]:
                report.submits.extend(batch.result())
        report.submit_seconds = time.monotonic() - started
        for submit in report.submits:
            problem = check_answer(submit)
            if problem:
                report.violations.append(f"user {submit.user[:8]}: {problem}")
        _drain(report, people, clients, drain_timeout)
        _check_accounts(report, people, initial_coins, free_daily_jobs, day)
        if live_counts is not None:
            report.live = _settled_counts(live_counts)
            for tier, count in report.live.items():
                if count:
                    report.violations.append(f"{count} {tier} admission slot(s) left after drain")
    finally:
        for person in people:
            person.close()
    return report


def _settled_counts(
    live_counts: Callable[[], dict[str, int]], timeout: float = 10.0
) -> dict[str, int]:
    """The admission counters once they reach zero, or as they are at the deadline: a worker
    frees a job's slots just after the job turns terminal in the database."""
    deadline = time.monotonic() + timeout
    counts = live_counts()
    while any(counts.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = live_counts()
    return counts


def _drain(report: Report, people: list[Client], clients: int, timeout: float) -> None:
    """Poll every user's job list until each accepted job is terminal, or the deadline."""
    accepted: dict[str, set[str]] = {}
    for submit in report.submits:
        if submit.job is not None:
            accepted.setdefault(submit.user, set()).add(submit.job["id"])
    started = time.monotonic()
    deadline = started + timeout
    waiting = [p for p in people if p.user in accepted]
    with ThreadPoolExecutor(min(clients, 32)) as pool:
        while waiting:
            listed = dict(zip(waiting, pool.map(Client.jobs, waiting), strict=True))
            still = []
            for person, jobs in listed.items():
                report.final.update(jobs)
                report.owner.update(dict.fromkeys(jobs, person.user))
                missing = accepted[person.user] - set(jobs)
                if missing:
                    report.violations.append(f"user {person.user[:8]}: jobs not listed: {missing}")
                mine = accepted[person.user] & set(jobs)
                if any(jobs[j]["status"] not in TERMINAL for j in mine):
                    still.append(person)
            waiting = still
            if waiting and time.monotonic() > deadline:
                open_jobs = sum(1 for j in report.final.values() if j["status"] not in TERMINAL)
                report.violations.append(f"{open_jobs} job(s) not terminal after {timeout:.0f} s")
                break
            if waiting:
                time.sleep(0.25)  # poll interval; the deadline above bounds the wait
    report.drain_seconds = time.monotonic() - started


def _check_accounts(
    report: Report, people: list[Client], initial_coins: int, free_daily: int, day: Any
) -> None:
    same_day = datetime.now(UTC).date() == day
    with ThreadPoolExecutor(32) as pool:
        report.me = dict(zip([p.user for p in people], pool.map(Client.me, people), strict=True))
    by_user: dict[str, list[dict[str, Any]]] = {}
    for job_id, job in report.final.items():
        by_user.setdefault(report.owner[job_id], []).append(job)
    for person in people:
        me = report.me[person.user]
        jobs = by_user.get(person.user, [])
        spent = sum(j["cost"] for j in jobs if j["tier"] == "paid" and j["status"] == "succeeded")
        if me["coins"] != initial_coins - spent:
            report.violations.append(
                f"user {person.user[:8]}: {me['coins']} coins, expected {initial_coins - spent}"
            )
        used = sum(1 for j in jobs if j["tier"] == "free" and j["status"] == "succeeded")
        if same_day and me["free_jobs_left_today"] != max(free_daily - used, 0):
            report.violations.append(
                f"user {person.user[:8]}: {me['free_jobs_left_today']} free jobs left, "
                f"expected {max(free_daily - used, 0)}"
            )
        if me["active_jobs"] != 0:
            report.violations.append(f"user {person.user[:8]}: {me['active_jobs']} active jobs")


def redis_live_counts(redis_url: str, prefix: str) -> Callable[[], dict[str, int]]:
    """Read the admission counters the way the producer does."""

    def read() -> dict[str, int]:
        from lib.state import State
        from lib.state.tcp import TcpBackend

        backend = TcpBackend(redis_url)
        try:
            state = State(backend, prefix=prefix)
            return {tier: state.live(tier) for tier in ("free", "paid")}
        finally:
            backend.close()

    return read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running producer; default: start a local stack")
    parser.add_argument("--redis-url", help="check the admission counters in this Redis")
    parser.add_argument("--redis-prefix", default="cs:")
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--initial-coins", type=int, default=5)
    parser.add_argument("--free-daily-jobs", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    options = {
        "submits": args.submits,
        "clients": args.clients,
        "users": args.users,
        "initial_coins": args.initial_coins,
        "free_daily_jobs": args.free_daily_jobs,
        "drain_timeout": args.drain_timeout,
        "seed": args.seed,
    }
    if args.base_url:
        counts = redis_live_counts(args.redis_url, args.redis_prefix) if args.redis_url else None
        report = run(args.base_url, live_counts=counts, **options)  # type: ignore[arg-type]
    else:
        report = run_on_local_stack(**options)  # type: ignore[arg-type]
    print(report.summary(), flush=True)
    return 1 if report.violations else 0


def local_overrides() -> dict[str, str]:
    """A local stack for the load test: the SPEC's limits, fast offline LLM, short retries."""
    return {
        **SPEC_LIMITS,
        # Said explicitly (detached is the default): the load test's figures were taken inline.
        "EXECUTION_MODE": "inline",
        "JOB_RETRIES": "1",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "2000",
        "LOG_LEVEL": "WARNING",
    }


def run_on_local_stack(**options: Any) -> Report:
    from scripts.stack.devstack import Stack

    with Stack(overrides=local_overrides(), quiet=True) as stack:
        counts = redis_live_counts(stack.env["REDIS_URL"], stack.env.get("REDIS_PREFIX", "cs:"))
        return run(stack.producer_url, live_counts=counts, **options)


if __name__ == "__main__":
    sys.exit(main())
