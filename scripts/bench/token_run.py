"""The body of `scripts.bench.token_path` (imported after gevent's patching, when asked)."""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import lib.llm
from lib.config import Settings
from lib.errors import RetryableError
from lib.events import JobEvents
from lib.handlers import Context, get
from lib.metrics import Metrics
from lib.models import ErrorCode, JobInput
from lib.state import State
from lib.state.tcp import TcpBackend

RESUME = "Python engineer, eight years of streaming services, Redis and Postgres at scale."
JOB = "Senior backend engineer: Python, queues, Redis streams, PostgreSQL, observability."


def _lines_chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The model's stream read as lib/llm.py reads it (`iter_lines`, a `json.loads` of every
    `data:` line), without the rest of the worker's path."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        if chunk.get("error"):
            raise RetryableError(
                "the model provider failed mid-answer", code=ErrorCode.LLM_UNAVAILABLE
            )
        yield chunk


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker(args: argparse.Namespace, watched: bool = True) -> Callable[[int], int]:
    settings = Settings(  # type: ignore[call-arg]
        openai_base_url=args.llm, openai_api_key="offline", llm_read_timeout_seconds=30.0
    )
    llm = lib.llm.LLM(settings)
    state = State(TcpBackend(args.redis), prefix=f"tokbench-{uuid.uuid4().hex[:8]}:")
    handler = get("job_match")
    assert handler is not None
    metrics = Metrics()
    markers = f"[[llm:slow={args.slow}]] [[llm:tokens={args.tokens}]]"

    def one(i: int) -> int:
        job_id = str(uuid.uuid4())
        events = JobEvents(
            state,
            job_id,
            1,
            flush_ms=150,
            flush_chars=600,
            idle_flush_ms=0,
            viewer=(lambda: "tcp") if watched else (lambda: None),
        )
        events.running()
        ctx = Context(
            job_id=job_id,
            kind=handler.kind,
            tier="free",
            attempt=1,
            model="openai:offline",
            events=events,
            llm=llm,
            expected_chars=handler.expected_chars,
            metrics=metrics,
        )
        job_input = JobInput(resume_text=f"{RESUME} {markers} {i}", job_description=JOB)
        handler.handle(ctx, job_input)
        return int(ctx.usage["completion_tokens"])

    return one


def _reader(args: argparse.Namespace, models: bool, paced: bool) -> Callable[[int], int]:
    import openai

    client = openai.OpenAI(base_url=args.llm, api_key="offline", max_retries=0)
    fmt = {"type": "json_object"}
    markers = f"[[llm:slow={args.slow}]] [[llm:tokens={args.tokens}]]"

    def sdk_models(i: int) -> int:
        msgs = [{"role": "user", "content": f"{markers} {i}"}]
        n = 0
        with client.chat.completions.create(  # type: ignore[call-overload]
            model="m", messages=msgs, stream=True, response_format=fmt
        ) as stream:
            for chunk in stream:
                n += sum(1 for c in chunk.choices if c.delta.content)
        return n

    def raw_lines(i: int) -> int:
        msgs = [{"role": "user", "content": f"{markers} {i}"}]
        n = 0
        with client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
            model="m", messages=msgs, stream=True, response_format=fmt
        ) as response:
            for chunk in _lines_chunks(response):
                n += sum(1 for c in chunk["choices"] if c["delta"].get("content"))
        return n

    def raw_lines_paced(i: int) -> int:
        msgs = [{"role": "user", "content": f"{markers} {i}"}]
        n, slept = 0, 0.0
        with client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
            model="m", messages=msgs, stream=True, response_format=fmt
        ) as response:
            for chunk in _lines_chunks(response):
                n += sum(1 for c in chunk["choices"] if c["delta"].get("content"))
                if time.monotonic() - slept >= 0.14:
                    time.sleep(0.14)
                    slept = time.monotonic()
        return n

    if paced:
        return raw_lines_paced
    return sdk_models if models else raw_lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `args.streams` streams of `args.path` at once; tokens read and CPU spent."""
    if args.path in ("worker", "worker-unwatched"):
        one = _worker(args, watched=args.path == "worker")
    elif args.path in ("sdk-models", "raw-lines", "raw-lines-paced"):
        one = _reader(args, models=args.path == "sdk-models", paced=args.path.endswith("paced"))
    else:
        raise SystemExit(f"unknown path {args.path}")
    one(-1)  # warm: imports, the client's connection pool, the scripts loaded in Redis
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one(-2)
        profiler.disable()
        profiler.dump_stats(args.profile)
    counts: list[int] = []
    errors: list[str] = []

    def task(i: int) -> None:
        try:
            counts.append(one(i))
        except Exception as exc:  # counted: a failed stream makes the figure suspect
            errors.append(repr(exc))

    threads = [threading.Thread(target=task, args=(i,)) for i in range(args.streams)]
    cpu, wall = _cpu(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    tokens = sum(counts)
    return {
        "path": args.path,
        "mode": args.mode,
        "streams": args.streams,
        "tokens": tokens,
        "errors": errors[:3],
        "failed": len(errors),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 2),
        "cpu_us_per_token": round(cpu / max(1, tokens) * 1e6, 1),
    }
