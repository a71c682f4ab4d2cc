"""4. Added delta latency on the whole stack, from the LLM's stamp on a token to the SSE client."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from scripts.bench.common import Bench, body, dist, is_terminal, new_user, ratio, say


# 4. Added delta latency on the whole stack ---------------------------------------------------
@dataclass
class Stream:
    job_id: str | None = None
    events_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    status: str | None = None
    submit_ms_server: float | None = None


async def submit_async(
    client: httpx.AsyncClient, stream: Stream, payload: dict[str, Any], gate: asyncio.Semaphore
) -> None:
    async with gate:
        try:
            answer = await client.post("/api/jobs", json=payload, headers=stream.headers)
        except httpx.HTTPError:
            stream.status = "submit-error"
            return
    if answer.status_code != 202:
        stream.status = f"submit-{answer.status_code}"
        return
    timing = re.search(r"dur=([\d.]+)", answer.headers.get("Server-Timing", ""))
    stream.submit_ms_server = float(timing.group(1)) if timing else None
    stream.job_id = answer.json()["job"]["id"]
    stream.events_url = answer.json()["events_url"]


async def read_stream(client: httpx.AsyncClient, stream: Stream, until: float) -> None:
    last_id: str | None = None
    while time.time() < until and stream.status is None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with aconnect_sse(client, "GET", stream.events_url or "", headers=headers) as src:
                async for sse in src.aiter_sse():
                    if not sse.data:
                        continue
                    received = time.time()
                    data = json.loads(sse.data)
                    last_id = sse.id or last_id
                    if sse.event == "delta":
                        stream.latencies += [received - s for s in data.get("llm_ts", [])]
                    if is_terminal(sse.event, data):
                        stream.status = data["status"]
                        return
                    if received > until:
                        return
        except httpx.HTTPError:
            await asyncio.sleep(0.2)


async def _streams(bench: Bench, n: int, markers: str, window: float) -> list[Stream]:
    """Submit n jobs at once, each followed by an SSE client for `window` s, then cancel the
    jobs still running so the next point starts clean."""
    streams = [Stream(headers=new_user()[1]) for _ in range(n)]
    payload = body(markers)
    limits = httpx.Limits(max_connections=n + 32, max_keepalive_connections=n + 32)
    timeout = httpx.Timeout(60.0, connect=20.0)
    async with httpx.AsyncClient(base_url=bench.url, limits=limits, timeout=timeout) as client:
        gate = asyncio.Semaphore(32)
        await asyncio.gather(*(submit_async(client, s, payload, gate) for s in streams))
        until = time.time() + window
        live = [s for s in streams if s.job_id]
        await asyncio.gather(*(read_stream(client, s, until) for s in live))

        async def cancel(s: Stream) -> None:
            if s.status is None:
                async with gate:
                    try:
                        await client.post(f"/api/jobs/{s.job_id}/cancel", headers=s.headers)
                    except httpx.HTTPError:
                        pass  # the drain below waits for the worker either way

        await asyncio.gather(*(cancel(s) for s in live))
    return streams


def running_jobs(bench: Bench) -> int:
    """Attempts running in the worker now (its `cs_jobs_running`, summed over processes)."""
    assert bench.stack
    text = httpx.get(f"{bench.stack.worker_url}/metrics", timeout=10).text
    found = re.findall(r"^cs_jobs_running(?:\{[^}]*\})? ([\d.e+]+)$", text, re.M)
    return int(sum(float(v) for v in found))


def _drain(bench: Bench, timeout: float = 60) -> None:
    """Wait until the worker runs nothing (the cancelled attempts have stopped)."""
    assert bench.stack
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_jobs(bench) == 0:
            return
        time.sleep(0.5)


def latency(benches: dict[str, Bench], quick: bool) -> dict[str, Any]:
    points = [(1, 20), (100, 20), (500, 20), (1, 60), (100, 60), (500, 60)]
    if quick:
        points = [(1, 20), (20, 20), (1, 60), (20, 60)]
    window = 6.0
    out: dict[str, Any] = {}
    for n, rate in points:
        for name in ("ours", "baseline"):
            bench = benches[f"{name}-1"]
            say(f"latency: {n} streams at {rate} tokens/s, {name}")
            markers = f"[[llm:slow={1000 / rate:.1f}]] [[llm:tokens=2000]]"
            streams = asyncio.run(_streams(bench, n, markers, window))
            _drain(bench)
            values = [v for s in streams for v in s.latencies]
            refused = sum(1 for s in streams if (s.status or "").startswith("submit"))
            out.setdefault(f"{n}x{rate}tps", {})[name] = {
                "latency_ms": dist(values, 1000),
                "streams": n,
                "streams_with_tokens": sum(1 for s in streams if s.latencies),
                "refused": refused,
            }
        point = out[f"{n}x{rate}tps"]
        point["p50_ratio"] = ratio(
            point["baseline"]["latency_ms"]["p50"], point["ours"]["latency_ms"]["p50"]
        )
        point["p99_ratio"] = ratio(
            point["baseline"]["latency_ms"]["p99"], point["ours"]["latency_ms"]["p99"]
        )
    return out
