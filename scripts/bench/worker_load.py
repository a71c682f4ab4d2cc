"""The load of the worker-class bench (`scripts.bench.worker_classes`): jobs submitted, followed
over SSE or polled, and the figures drawn from them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET
from scripts.stack.devstack import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from helpers.net import free_port as free_port  # noqa: E402
from helpers.stack import JD, RESUME  # noqa: E402

from scripts.bench.procs import pct


# The load -------------------------------------------------------------------------------------
@dataclass
class Job:
    index: int
    user_id: str
    token: str
    submitted: float = 0.0
    status_code: int | None = None
    job_id: str | None = None
    events_url: str | None = None
    followed: bool = False
    final: dict[str, Any] | None = None
    received: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    replay: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _terminal(event: str, data: dict[str, Any]) -> bool:
    return event == "status" and data.get("status") in ("succeeded", "failed", "cancelled")


async def _submit(
    client: httpx.AsyncClient, job: Job, resume: str, gate: asyncio.Semaphore
) -> None:
    body = {"kind": "job_match", "input": {"resume_text": resume, "job_description": JD}}
    async with gate:
        job.submitted = time.time()
        try:
            response = await client.post("/api/jobs", json=body, headers=job.headers)
        except httpx.HTTPError:
            return
    job.status_code = response.status_code
    if response.status_code in (200, 202):
        payload = response.json()
        job.job_id = payload["job"]["id"]
        job.events_url = payload["events_url"]


async def _follow(client: httpx.AsyncClient, job: Job, deadline: float) -> None:
    """Read the job's SSE stream live, reconnecting like EventSource; stamp each event."""
    last_id: str | None = None
    while time.time() < deadline:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            async with aconnect_sse(client, "GET", job.events_url or "", headers=headers) as src:
                async for sse in src.aiter_sse():
                    if not sse.data:
                        continue
                    data = json.loads(sse.data)
                    job.received.append((time.time(), sse.event, data))
                    last_id = sse.id or last_id
                    if _terminal(sse.event, data):
                        return
        except httpx.HTTPError:
            await asyncio.sleep(0.5)


async def _get_job(client: httpx.AsyncClient, job: Job) -> dict[str, Any] | None:
    try:
        response = await client.get(f"/api/jobs/{job.job_id}", headers=job.headers)
    except httpx.HTTPError:
        return None
    return response.json()["job"] if response.status_code == 200 else None


async def _poll(client: httpx.AsyncClient, job: Job, deadline: float, every: float) -> None:
    """Poll the job's status until it ends: from 3 `every` after submit, then every `every` s.
    (Completion times come from the job's `finished_at`, so polling late loses nothing.)"""
    await asyncio.sleep(max(0.0, job.submitted + 3 * every - time.time()))
    while time.time() < deadline:
        state = await _get_job(client, job)
        if state and state["status"] in ("succeeded", "failed", "cancelled"):
            return
        await asyncio.sleep(every)


async def _collect(client: httpx.AsyncClient, job: Job, gate: asyncio.Semaphore) -> None:
    """After the run: the job's final state, and its whole stream as the worker stamped it."""
    async with gate:
        for _ in range(3):  # a busy machine may time a request out; that is not a job failure
            job.final = await _get_job(client, job)
            if job.final is not None:
                break
            await asyncio.sleep(1.0)
        try:
            async with aconnect_sse(client, "GET", job.events_url or "") as src:
                async for sse in src.aiter_sse():
                    if sse.data:
                        data = json.loads(sse.data)
                        job.replay.append((sse.event, data))
                        if _terminal(sse.event, data):
                            break
        except httpx.HTTPError:
            pass


async def drive(
    base: str, n: int, sample: int, slow_ms: int, timeout: float, poll_every: float = 1.0
) -> list[Job]:
    """Submit n jobs at once, follow `sample` streams live, poll the rest, then collect."""
    jobs = []
    for i in range(n):
        user_id = str(uuid.uuid4())
        jobs.append(Job(i, user_id, mint_access_token(user_id, DEV_JWT_SECRET)))
    if sample:
        for job in jobs[:: max(1, n // sample)][:sample]:
            job.followed = True
    resume = f"{RESUME} [[llm:slow={slow_ms}]]"
    limits = httpx.Limits(max_connections=sample + 64, max_keepalive_connections=sample + 64)
    timeout_cfg = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout_cfg) as client:
        deadline = time.time() + timeout
        gate = asyncio.Semaphore(16)  # the producer has 64 threads; 20 are held by streams

        async def one(job: Job) -> None:
            await _submit(client, job, resume, gate)
            if job.job_id is None:
                return
            if job.followed:
                await _follow(client, job, deadline)
            else:
                await _poll(client, job, deadline, poll_every)

        await asyncio.gather(*(one(job) for job in jobs))
        collect_gate = asyncio.Semaphore(16)
        await asyncio.gather(*(_collect(client, j, collect_gate) for j in jobs if j.job_id))
    return jobs


# Figures --------------------------------------------------------------------------------------
def _iso(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _delta_gaps(stamps: list[tuple[float, int]]) -> list[float]:
    """Gaps between consecutive deltas of the same attempt; stamps are (time, attempt)."""
    return [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False) if a[1] == b[1]]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[str(item)] = out.get(str(item), 0) + 1
    return out


def figures(jobs: list[Job]) -> dict[str, Any]:
    first, server_gaps, client_first, client_gaps, ends, starts = [], [], [], [], [], []
    failed = retried = 0
    for job in jobs:
        final = job.final or {}
        if final.get("status") != "succeeded":
            failed += 1
        if (final.get("attempts") or 0) > 1:
            retried += 1
        if (started := _iso(final.get("started_at"))) is not None:
            starts.append(started - job.submitted)
        if (finished := _iso(final.get("finished_at"))) is not None:
            ends.append(finished - job.submitted)
        deltas = [(d["ts"], d["attempt"]) for e, d in job.replay if e == "delta"]
        if deltas:
            first.append(deltas[0][0] - job.submitted)
            server_gaps += _delta_gaps(deltas)
        live = [(t, d["attempt"]) for t, e, d in job.received if e == "delta"]
        if live:
            client_first.append(live[0][0] - job.submitted)
            client_gaps += _delta_gaps(live)

    def dist(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
        out = {f"p{q}": pct(values, q) for q in (50, 99)}
        out["max"] = max(values) if values else None
        return {k: None if v is None else round(v * scale, 3) for k, v in out.items()}

    return {
        "submitted": len(jobs),
        "accepted": sum(1 for j in jobs if j.job_id),
        "submit_status": {
            str(c): sum(1 for j in jobs if j.status_code == c)
            for c in {j.status_code for j in jobs}
        },
        "failed": failed,
        # Final status per job as GET /api/jobs/<id> reported it ("unknown": no answer),
        # and the error codes of the jobs that did not succeed.
        "outcomes": _count((j.final or {}).get("status", "unknown") for j in jobs),
        "error_codes": _count(
            ((j.final or {}).get("error") or {}).get("code", "none")
            for j in jobs
            if (j.final or {}).get("status") != "succeeded"
        ),
        "retried": retried,
        "followed_streams": sum(1 for j in jobs if j.followed),
        "first_delta_s": dist(first),
        "start_s": dist(starts),
        "finish_s": dist(ends),
        "delta_gap_ms_worker": dist(server_gaps, 1000),
        "first_delta_s_client_sample": dist(client_first),
        "delta_gap_ms_client_sample": dist(client_gaps, 1000),
    }
