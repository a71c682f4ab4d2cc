"""7. Live jobs at once on one box under a QStash plan's parallelism: inline against detached, on
the free plan and on pay-as-you-go.

Inline, QStash holds a delivery for the whole job, so the plan's parallelism (free 10, payg 100)
caps the jobs running at once; detached (EXECUTION_MODE=detached), a delivery lasts only until
the job is started. Each (plan, mode) gets a `make dev` stack (one worker box, WEB_CONCURRENCY
processes) on that `QSTASH_PLAN`, the dev broker enforcing the plan's parallelism; they run one
after the other. `jobs` jobs of 10-25 s (the offline LLM at 25 tokens/s; more than payg's 100, so
that its cap shows inline) are submitted at once through the producer's API; the jobs `running`
in the database are sampled every 0.25 s. A run ends when every job is terminal, or after
`INLINE_FREE_SECONDS` for inline on the free plan (10 at a time would take minutes to drain).
The QStash messages per job come from the dev broker's log (common.BrokerLog): publishes to the
worker's `/v1/execute` (the submit's, and detached mode's waits, wakes and retries), any other
message (failure callbacks; the reconciler's schedule is off here), and delivery attempts.

    .venv/bin/python -m scripts.bench.live_jobs [--jobs 240] [--plans free,payg]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from typing import Any

import httpx
import psycopg

from lib.queue import plans
from lib.store import migrate
from scripts.bench.common import COMMON, OUT, Bench, BrokerLog, body, new_user, say
from scripts.stack import embedded

PLANS = ("free", "payg")
MODES = ("inline", "detached")
# Inline on the free plan drains 10 at a time: sampled this long, not drained.
INLINE_FREE_SECONDS = 30.0
DRAIN_TIMEOUT = 300.0
JOBS_PER_USER = 4


def mode_overrides(mode: str, plan: str) -> dict[str, str]:
    """The settings of `mode` on `plan`: inline, LLM_MAX_CONCURRENCY_* may not exceed the plan's
    parallelism (config refuses it), so it is set to it; detached bounds models itself."""
    if mode == "inline":
        parallelism = plans.plan(plan).parallelism
        return {"EXECUTION_MODE": "inline", "LLM_MAX_CONCURRENCY_PAID": str(parallelism)}
    return {
        "EXECUTION_MODE": "detached",
        "LLM_MAX_CONCURRENCY_PAID": "1000",
        "WORKER_MAX_JOBS": "500",
    }


def messages_per_job(counts: dict[str, dict[str, int]], jobs: int) -> dict[str, Any]:
    """QStash messages per job from a BrokerLog's counts: publishes to the worker, other
    publishes, and delivery attempts (what QStash bills), with the raw counts."""
    published, delivered = counts["publish"], counts["deliver"]
    to_worker = published.get("/v1/execute", 0)
    other = sum(published.values()) - to_worker
    return {
        "to_worker": round(to_worker / max(1, jobs), 3),
        "other": round(other / max(1, jobs), 3),
        "deliveries": round(sum(delivered.values()) / max(1, jobs), 3),
        "published": published,
        "delivered": delivered,
    }


async def _submit(url: str, jobs: int) -> list[str]:
    users = [new_user()[1] for _ in range(max(1, jobs // JOBS_PER_USER + 1))]
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> str | None:
            async with gate:
                answer = await client.post(
                    "/api/jobs",
                    json=body(""),
                    headers=users[i // JOBS_PER_USER],
                )
            return str(answer.json()["job"]["id"]) if answer.status_code == 202 else None

        ids = await asyncio.gather(*(one(i) for i in range(jobs)))
    return [i for i in ids if i]


class Sampler:
    """Counts the given jobs by status in Postgres every `interval` s, in a thread."""

    def __init__(self, database_url: str, ids: list[str], interval: float = 0.25) -> None:
        self.database_url, self.ids, self.interval = database_url, ids, interval
        self.peak_running = 0
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "select status::text, count(*) from cs_jobs where id = any(%s::uuid[])"
                    " group by status",
                    (self.ids,),
                ).fetchall()
                self.counts = {str(s): int(n) for s, n in rows}
                self.peak_running = max(self.peak_running, self.counts.get("running", 0))
                self._stop.wait(self.interval)

    def terminal(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))


def _drain_seconds(database_url: str, ids: list[str]) -> float:
    """From the first submit to the last job's end, from the database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select extract(epoch from max(updated_at) - min(created_at))"
            " from cs_jobs where id = any(%s::uuid[])",
            (ids,),
        ).fetchone()
    return round(float(row[0] or 0), 1) if row else 0.0


def run_mode(mode: str, plan: str, database_url: str, jobs: int) -> dict[str, Any]:
    overrides = {
        **COMMON,
        "QSTASH_PLAN": plan,
        "JOB_RETRIES": "3",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "25",
        **mode_overrides(mode, plan),
    }
    bench = Bench(f"live-{plan}-{mode}", overrides, database_url).start()
    try:
        broker = BrokerLog(bench).mark()
        began = time.monotonic()
        ids = asyncio.run(_submit(bench.url, jobs))
        submitted = time.monotonic() - began
        sampler = Sampler(database_url, ids).start()
        short = mode == "inline" and plan == "free"
        deadline = time.monotonic() + (INLINE_FREE_SECONDS if short else DRAIN_TIMEOUT)
        while time.monotonic() < deadline and sampler.terminal() < len(ids):
            time.sleep(0.5)
        sampler.stop()
        done = sampler.terminal() == len(ids)
        out = {
            "jobs": len(ids),
            "submit_seconds": round(submitted, 1),
            "peak_running": sampler.peak_running,
            "sampled_seconds": round(time.monotonic() - began, 1),
            "all_terminal": done,
            "drain_seconds": _drain_seconds(database_url, ids) if done else None,
            "counts": sampler.counts,
            # Not drained, the figures count what the broker did so far (every submit's
            # publish, the deliveries of the jobs that started).
            "qstash_messages_per_job": messages_per_job(broker.counts(), len(ids)),
        }
        return out
    finally:
        bench.stop()


def live_jobs(
    database_url: str,
    quick: bool = False,
    plans_run: tuple[str, ...] = PLANS,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Every (plan, mode), one after the other; the figures of each, by plan then mode."""
    n = jobs or (120 if quick else 240)
    out: dict[str, Any] = {"jobs": n, "plans": {}}
    for plan in plans_run:
        out["plans"][plan] = {"parallelism": plans.plan(plan).parallelism}
        for mode in MODES:
            say(f"live jobs: {mode} mode, {n} jobs, QSTASH_PLAN={plan}")
            run = run_mode(mode, plan, database_url, n)
            out["plans"][plan][mode] = run
            drained = f", drained in {run['drain_seconds']} s" if run["all_terminal"] else ""
            msgs = run["qstash_messages_per_job"]
            say(
                f"live jobs: {plan}/{mode}: peak {run['peak_running']} running at once{drained};"
                f" per job: {msgs['to_worker']} to the worker, {msgs['other']} other,"
                f" {msgs['deliveries']} deliveries"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.live_jobs", description=__doc__)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--plans", default=",".join(PLANS))
    args = parser.parse_args(argv)
    pg = embedded.start_postgres()
    try:
        migrate.apply(pg.url)
        results = live_jobs(pg.url, plans_run=tuple(args.plans.split(",")), jobs=args.jobs)
    finally:
        pg.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "live_jobs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
