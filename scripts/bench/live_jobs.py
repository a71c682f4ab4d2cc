"""7. Live jobs at once on one box under a QStash plan's parallelism: inline against detached.

Inline, QStash holds a delivery for the whole job, so the plan's parallelism (free: 10) caps the
jobs running at once; detached (EXECUTION_MODE=detached), a delivery lasts only until the job is
started. Each mode gets a `make dev` stack (one worker box, WEB_CONCURRENCY processes) on
`QSTASH_PLAN` (default free), the dev broker enforcing the plan's parallelism. `jobs` jobs of
10-25 s (the offline LLM at 25 tokens/s) are submitted at once through the producer's API; the
jobs `running` in the database are sampled every 0.25 s. Inline is sampled for
`inline_seconds` only (its queue would take minutes to drain at 10 at a time); detached runs
until every job is terminal, which also gives the QStash messages per job.

    .venv/bin/python -m scripts.bench.live_jobs [--jobs 240] [--plan free]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from typing import Any

import httpx
import psycopg

from lib.store import migrate
from scripts.bench.common import COMMON, OUT, Bench, body, new_user, say
from scripts.stack import embedded

MODES = {
    # Inline, LLM_MAX_CONCURRENCY_* may not exceed the plan's parallelism (config refuses it).
    "inline": {"EXECUTION_MODE": "inline", "LLM_MAX_CONCURRENCY_PAID": "10"},
    "detached": {
        "EXECUTION_MODE": "detached",
        "LLM_MAX_CONCURRENCY_PAID": "1000",
        "WORKER_MAX_JOBS": "500",
    },
}
JOBS_PER_USER = 4


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


def run_mode(
    mode: str, database_url: str, jobs: int, plan: str, inline_seconds: float, timeout: float
) -> dict[str, Any]:
    overrides = {
        **COMMON,
        "QSTASH_PLAN": plan,
        "JOB_RETRIES": "3",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "25",
        **MODES[mode],
    }
    bench = Bench(f"live-{mode}", overrides, database_url).start()
    try:
        began = time.monotonic()
        ids = asyncio.run(_submit(bench.url, jobs))
        submitted = time.monotonic() - began
        sampler = Sampler(database_url, ids).start()
        window = inline_seconds if mode == "inline" else timeout
        deadline = time.monotonic() + window
        while time.monotonic() < deadline and sampler.terminal() < len(ids):
            time.sleep(0.5)
        sampler.stop()
        stats = bench.broker_stats()
        done = sampler.terminal() == len(ids)
        out = {
            "jobs": len(ids),
            "submit_seconds": round(submitted, 1),
            "peak_running": sampler.peak_running,
            "sampled_seconds": round(time.monotonic() - began, 1),
            "all_terminal": done,
            "counts": sampler.counts,
        }
        if done:
            # Publishes to the worker only: the broker's stats also count the reconciler's
            # schedule ticks.
            log = (OUT / "logs" / f"live-{mode}" / "broker.log").read_text()
            to_worker = len(re.findall(r" publish msg=\S+ dest=\S+/v1/execute ", log))
            out["qstash_messages_per_job"] = round(to_worker / len(ids), 3)
            out["broker_stats"] = stats
        return out
    finally:
        bench.stop()


def live_jobs(
    database_url: str, quick: bool = False, plan: str = "free", jobs: int | None = None
) -> dict[str, Any]:
    """Both modes, one after the other, on `plan`; the figures of each."""
    n = jobs or (120 if quick else 240)
    out: dict[str, Any] = {"plan": plan, "jobs": n}
    for mode in MODES:
        say(f"live jobs: {mode} mode, {n} jobs, QSTASH_PLAN={plan}")
        out[mode] = run_mode(mode, database_url, n, plan, 30.0, 240.0)
        say(f"live jobs: {mode}: peak {out[mode]['peak_running']} running at once")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.live_jobs", description=__doc__)
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--plan", default="free")
    args = parser.parse_args(argv)
    pg = embedded.start_postgres()
    try:
        migrate.apply(pg.url)
        results = live_jobs(pg.url, plan=args.plan, jobs=args.jobs)
    finally:
        pg.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "live_jobs.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
