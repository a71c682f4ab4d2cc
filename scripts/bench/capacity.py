"""5. The submit path (server-side and end to end) and 6. concurrency per worker container."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from lib.state import State
from lib.state.tcp import TcpBackend
from scripts.bench.common import Bench, body, dist, new_user, ratio, say, start_all
from scripts.bench.latency import Stream, read_stream, running_jobs, submit_async
from scripts.bench.procs import pct


# 5. The submit path ----------------------------------------------------------------------------
async def _submit_load(bench: Bench, n: int, concurrency: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    server: list[float] = []
    noop: list[float] = []
    async with httpx.AsyncClient(base_url=bench.url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(concurrency)

        async def health() -> None:
            async with gate:
                answer = await client.get("/api/health")
            timing = re.search(r"dur=([\d.]+)", answer.headers.get("Server-Timing", ""))
            if timing:
                noop.append(float(timing.group(1)))

        await asyncio.gather(*(health() for _ in range(min(n, 200))))
        # One at a time: what a submit costs the server when it does not wait on other requests.
        alone = [Stream(headers=new_user()[1]) for _ in range(min(n // 5, 100))]
        for s in alone:
            await submit_async(client, s, body("[[llm:slow=0]]"), asyncio.Semaphore(1))
        streams = [Stream(headers=new_user()[1]) for _ in range(n)]
        began = time.time()
        await asyncio.gather(
            *(submit_async(client, s, body("[[llm:slow=0]]"), gate) for s in streams)
        )
        submitted = time.time() - began
    server = [s.submit_ms_server for s in streams if s.submit_ms_server is not None]
    sequential = [s.submit_ms_server for s in alone if s.submit_ms_server is not None]
    return {
        "streams": streams,
        "server_ms_one_at_a_time": dist(sequential),
        "server_ms": dist(server),
        "noop_ms": dist(noop),
        "submit_seconds": submitted,
        "began": began,
        "accepted": sum(1 for s in streams if s.job_id),
        "errors": sum(1 for s in streams if not s.job_id),
    }


def submit_path(bench: Bench, database_url: str, quick: bool) -> dict[str, Any]:
    import psycopg

    n = 200 if quick else 600
    say(f"submit path: {n} submits from 32 clients, instant LLM")
    load = asyncio.run(_submit_load(bench, n, 32))
    ids = [s.job_id for s in load.pop("streams") if s.job_id]
    deadline = time.monotonic() + 180
    row: tuple[Any, ...] = (0, 0, None)
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            found = conn.execute(
                "select count(*) filter (where status in ('succeeded','failed','cancelled')),"
                " count(*) filter (where status = 'succeeded'),"
                " extract(epoch from max(finished_at)) from cs_jobs where id = any(%s::uuid[])",
                (ids,),
            ).fetchone()
            row = found or row
            if row[0] == len(ids):
                break
            time.sleep(0.5)
    finished, succeeded, last = int(row[0]), int(row[1]), float(row[2] or 0)
    elapsed = max(0.001, last - load["began"])
    return {
        **{k: v for k, v in load.items() if k != "began"},
        "finished": finished,
        "succeeded": succeeded,
        "jobs_per_second": round(succeeded / elapsed, 1),
        "server_vs_noop_p50": ratio(load["server_ms"]["p50"], load["noop_ms"]["p50"]),
    }


# 6. Concurrency per worker container -------------------------------------------------------------
@contextmanager
def _watching(bench: Bench, ids: list[str], prefix: str) -> Iterator[None]:
    """Keep every job marked as watched, as the browsers' SSE readers on Vercel would (the same
    `State.watch`), so the worker streams all of them; only a sample is read here: the readers
    do not run on the worker's VPS."""
    stop = threading.Event()
    assert bench.redis_server
    state = State(TcpBackend(bench.redis_server.url), prefix=prefix)

    def beat() -> None:
        seen, refreshed = 0, time.monotonic()
        while not stop.wait(0.2):
            for job_id in ids[seen:]:  # a new viewer for each new job
                state.watch(job_id, "tcp")
            seen = len(ids)
            if time.monotonic() - refreshed >= 10:  # well inside the 45 s TTL
                refreshed = time.monotonic()
                for job_id in ids[:seen]:
                    state.watch(job_id, "tcp")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        state.close()


async def _ramp(
    bench: Bench, step: int, every: float, cap: float, limit_mb: float
) -> dict[str, Any]:
    markers = "[[llm:slow=50]] [[llm:tokens=1200]]"  # 60 s at 20 tokens/s
    ids: list[str] = []
    steps: list[dict[str, Any]] = []
    sample: list[Stream] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=bench.url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(32)
        readers: list[asyncio.Task[None]] = []
        began = time.time()
        with _watching(bench, ids, f"bench-{bench.name}:"):
            while time.time() - began < cap:
                batch = [Stream(headers=new_user()[1]) for _ in range(step)]
                await asyncio.gather(*(submit_async(client, s, body(markers), gate) for s in batch))
                for s in batch:
                    if s.job_id:
                        ids.append(s.job_id)
                # Follow one stream in ten, for at most 90 s.
                for s in batch[::10]:
                    if s.job_id:
                        sample.append(s)
                        readers.append(
                            asyncio.create_task(read_stream(client, s, time.time() + 90))
                        )
                # Judge the steady state: the second half of the step, after the new jobs'
                # submits and first tokens (a burst a real ramp spreads out) have settled.
                await asyncio.sleep(every / 2)
                mark = {id(s): len(s.latencies) for s in sample}
                await asyncio.sleep(every / 2)
                window = [v for s in sample for v in s.latencies[mark.get(id(s), 0) :]]
                failed = sum(1 for s in sample if s.status == "failed") + sum(
                    1 for s in batch if not s.job_id
                )
                rss = bench.worker_rss_mb()
                p99 = pct(window, 99)
                steps.append(
                    {
                        "live": running_jobs(bench),
                        "submitted": len(ids),
                        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
                        "rss_mb": rss,
                        "failed": failed,
                    }
                )
                say(f"  {bench.name}: {steps[-1]}")
                if failed or rss > limit_mb or (p99 is not None and p99 > 0.25):
                    break
            for task in readers:  # the stack is stopped next: its jobs go with it
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    good = [
        s
        for s in steps
        if not s["failed"] and s["rss_mb"] <= limit_mb and (s["p99_ms"] or 0) <= 250
    ]
    best = good[-1] if good else None
    return {
        "steps": steps,
        "max_live_jobs": best["live"] if best else 0,
        "rss_mb_at_max": best["rss_mb"] if best else None,
        "stopped_by": "time cap" if len(good) == len(steps) else "a limit",
    }


def concurrency(database_url: str, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    classes = {
        "gthread": {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "640"},
        "gevent": {"GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_THREADS": "640"},
    }
    for name, overrides in classes.items():
        say(f"concurrency per worker: {name}")
        bench = Bench(f"ramp-{name}", {**overrides, "PRODUCER_THREADS": "256"}, database_url)
        start_all([bench])
        try:
            step, every, cap = (10, 4.0, 24.0) if quick else (50, 6.0, 60.0)
            out[name] = asyncio.run(_ramp(bench, step, every, cap, 1024))
        finally:
            bench.stop()
    return out
