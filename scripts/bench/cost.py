"""2. Cost per job in Redis commands and QStash messages, and 3. the flush-interval sweep."""

from __future__ import annotations

import atexit
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from httpx_sse import connect_sse

from lib.config import Settings
from lib.events import JobEvents
from lib.service import Producer
from lib.state import State
from lib.state.rest import RestBackend
from lib.state.tcp import TcpBackend
from scripts.bench.common import (
    BASELINE,
    Bench,
    body,
    command_delta,
    commandstats,
    dist,
    dollars_per_1000,
    is_terminal,
    new_user,
    ratio,
    say,
    serve_wsgi,
)
from scripts.stack import embedded


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


def _one_costed_job(
    bench: Bench, viewer: bool, markers: str, timeout: float, leave_after: float | None = None
) -> dict[str, Any]:
    """One job's Redis commands and QStash messages, unwatched or with one SSE viewer from
    submit to its end, or to `leave_after` seconds (the viewer leaves; the job runs on)."""
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
        flushes = 0  # the viewer's delta events: one per flush of the worker
        opened = time.monotonic()
        if viewer:
            with connect_sse(http, "GET", events_url, timeout=httpx.Timeout(timeout)) as src:
                for sse in src.iter_sse():
                    flushes += sse.event == "delta"
                    if sse.data and is_terminal(sse.event, json.loads(sse.data)):
                        status = json.loads(sse.data)["status"]
                        break
                    if leave_after is not None and time.monotonic() - opened >= leave_after:
                        break
        if status == "timeout":
            status = _wait_terminal(bench, job_id, headers, timeout)
        viewed = time.monotonic() - opened  # the viewer's stream: its upkeep's refreshes
    # The worker releases the lease and the slots right after the terminal event.
    time.sleep(1.5)
    used = command_delta(before, commandstats(client))
    broker_after = bench.broker_stats()
    client.close()
    return {
        "status": status,
        "commands": sum(used.values()),
        "by_command": used,
        "flushes": flushes,
        "viewer_s": round(viewed, 1) if viewer else 0,
        "qstash": {k: broker_after[k] - broker_before.get(k, 0) for k in broker_after},
    }


# Before one plain XADD per watched flush (docs/performance.md, the run of 2026-11-29): one
# viewer of the same job cost 1,406 commands against 44 unwatched, about 3.5 per flush (the
# EMIT script's EVALSHA, EXISTS and XADD, and the viewer's XREAD).
# In this bench's count, what one viewer added per delta event before (main at 572e50e,
# 2026-12-04: (1,443 - 52) / about 340 flushes).
BEFORE_PER_FLUSH = {
    "commands_one_viewer": 1406,
    "commands_no_viewer": 44,
    "per_flush": 3.5,
    "per_delta_event": 4.1,
}
# The watched flush interval of each side (`DELTA_FLUSH_MS`: our default, the baseline's).
FLUSH_MS = {
    "ours": int(Settings.model_fields["delta_flush_ms"].default),
    "baseline": int(BASELINE["DELTA_FLUSH_MS"]),
}
# A new connection's handshake (redis-py 5): in either job's count when its pool opened one.
HANDSHAKE = ("hello", "client|setinfo", "ping")


def per_flush(
    unwatched: dict[str, Any], watched: dict[str, Any], seconds: int, flush_ms: int
) -> dict[str, Any]:
    """What one viewer adds per flush: the watched job's commands less the unwatched one's,
    over the watched job's flushes (its delta events), in all and by command. Also the issue's
    count, which set the target: all of the watched job's commands over the flushes its flush
    interval allows (`seconds` / `flush_ms`: 1,406 / 400 = 3.5 before)."""
    flushes = max(1, watched["flushes"])
    nominal = seconds * 1000 // flush_ms
    added = {
        name: round((count - unwatched["by_command"].get(name, 0)) / flushes, 3)
        for name, count in watched["by_command"].items()
    }
    # The viewer's upkeep: what it adds besides the flushes' XADD and XREAD (its stream slot,
    # the `watch` key, the `running` status written at once). A new connection's handshake on
    # either job is noise of this bench, not the viewer's: left out of this figure only.
    upkeep = sum(
        watched["by_command"].get(name, 0) - unwatched["by_command"].get(name, 0)
        for name in set(watched["by_command"]) | set(unwatched["by_command"])
        if name not in ("xadd", "xread", *HANDSHAKE)
    )
    return {
        "flushes": watched["flushes"],
        "commands": round((watched["commands"] - unwatched["commands"]) / flushes, 2),
        "issue_count": {
            "nominal_flushes": nominal,
            "flush_ms": flush_ms,
            "commands": round(watched["commands"] / nominal, 2),
        },
        "by_command": {k: v for k, v in sorted(added.items(), key=lambda kv: -kv[1]) if v},
        "upkeep_commands": upkeep,
        "viewer_s": watched.get("viewer_s"),
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
    # A viewer who leaves a sixth of the way in (10 s of 60): what the job costs after that.
    with ThreadPoolExecutor(2) as pool:
        leaving = {
            name: pool.submit(
                _one_costed_job, benches[f"{name}-1"], True, markers, seconds * 4, seconds / 6
            )
            for name in ("ours", "baseline")
        }
        for name, future in leaving.items():
            out[f"{name}-left"] = future.result()
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
    for name in ("ours", "baseline"):
        out[f"{name}_per_flush"] = per_flush(
            out[f"{name}-0"], out[f"{name}-1"], seconds, FLUSH_MS[name]
        )
    out["before_per_flush"] = BEFORE_PER_FLUSH
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

    server = embedded.start_redis()
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
