"""7. Jobs per hour on one worker box and on two (scale-out, lib/boxes.py), side by side.

Two stacks run at once: one with one worker box, one with two (WORKERS=2, WORKER_URLS listing
both). Every box is the same fixed process model, one gthread process of BOX_THREADS threads, so
each holds BOX_THREADS jobs at once and queues the rest: the box, not this machine's two cores,
is the limit (20 tokens/s jobs are light). Each stack gets 2 x BOX_THREADS jobs of about 60 s
at once; jobs per hour = jobs / (last job's end - first job's submit) x 3,600, from the
database. The spread (attempts per box, from each box's /metrics) is reported too.

Both stacks share the machine, so the ratio of the same run is the figure to trust; boxes on
separate machines would not share cores.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from scripts.bench.common import Bench, body, new_user, say, start_all

# 20 tokens/s: 1,200 tokens is a 60 s job (100 in the quick run: 5 s).
FULL = {"threads": 16, "tokens": 1200}
QUICK = {"threads": 4, "tokens": 100}


def _overrides(threads: int, boxes: int) -> dict[str, str]:
    return {
        "WORKERS": str(boxes),
        "GUNICORN_WORKER_CLASS": "gthread",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": str(threads),
        "WORKER_MAX_JOBS": str(threads),
        "BOX_HEARTBEAT_SECONDS": "1",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "20",
        "PRODUCER_THREADS": "128",
        # The benches share one database: a reconciler would take the others' jobs for dead.
        "RECONCILE_CRON": "",
    }


def _attempts(box: str) -> int:
    text = httpx.get(f"{box}/metrics", timeout=10).text
    found = re.findall(r"^cs_job_attempts_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return int(sum(float(value) for value in found))


def _submit(bench: Bench, n: int, tokens: int) -> list[str]:
    def one(_: int) -> str:
        headers = new_user()[1]
        answer = httpx.post(
            f"{bench.url}/api/jobs",
            json=body(f"[[llm:tokens={tokens}]]"),
            headers=headers,
            timeout=60,
        )
        answer.raise_for_status()
        return str(answer.json()["job"]["id"])

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def _finished(database_url: str, ids: list[str], deadline: float) -> dict[str, Any]:
    """Wait until every job is terminal (or the deadline); their statuses and time span."""
    query = (
        "select count(*) filter (where status in ('succeeded', 'failed', 'cancelled')),"
        " count(*) filter (where status = 'succeeded'),"
        " extract(epoch from max(updated_at) - min(created_at))"
        " from cs_jobs where id = any(%s::uuid[])"
    )
    with psycopg.connect(database_url) as conn:
        while True:
            done, succeeded, span = conn.execute(query, (ids,)).fetchone()  # type: ignore[misc]
            conn.commit()
            if done == len(ids) or time.monotonic() > deadline:
                return {"terminal": done, "succeeded": succeeded, "seconds": float(span or 0)}
            time.sleep(1.0)


def _run(bench: Bench, n: int, tokens: int, deadline: float) -> dict[str, Any]:
    assert bench.stack
    boxes = bench.stack.worker_urls
    before = [_attempts(box) for box in boxes]
    ids = _submit(bench, n, tokens)
    out = _finished(bench.database_url, ids, deadline)
    out["jobs"] = n
    out["attempts_per_box"] = [_attempts(box) - was for box, was in zip(boxes, before, strict=True)]
    out["jobs_per_hour"] = round(out["succeeded"] / out["seconds"] * 3600) if out["seconds"] else 0
    return out


def boxes(database_url: str, quick: bool) -> dict[str, Any]:
    """Jobs per hour of ~60 s jobs on one box and on two, run at the same time."""
    shape = QUICK if quick else FULL
    threads, tokens = shape["threads"], shape["tokens"]
    benches = {
        "one": Bench("boxes-one", _overrides(threads, 1), database_url),
        "two": Bench("boxes-two", _overrides(threads, 2), database_url),
    }
    say(f"jobs per hour: one box and two, {threads} threads each, {2 * threads} jobs")
    start_all(list(benches.values()))
    try:
        # Two waves on one box, one on two; the deadline leaves room for a slow machine.
        deadline = time.monotonic() + (6 if quick else 5) * tokens / 20 + 60
        with ThreadPoolExecutor(2) as pool:
            runs = {
                name: pool.submit(_run, bench, 2 * threads, tokens, deadline)
                for name, bench in benches.items()
            }
            out: dict[str, Any] = {name: run.result() for name, run in runs.items()}
    finally:
        for bench in benches.values():
            bench.stop()
    out["job_seconds"] = tokens / 20
    out["threads_per_box"] = threads
    one, two = out["one"]["jobs_per_hour"], out["two"]["jobs_per_hour"]
    out["ratio"] = round(two / one, 2) if one else None
    return out
