"""The sections without a stack: 1. cold start of each `api/` function, 1b. reading the model's
stream (the SDK's chunk models against raw lines)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from lib.config import DEV_JWT_SECRET
from lib.queue.signing import DEV_TOKEN
from scripts.bench.common import API_FUNCTIONS, OUT, free_port, ratio, say
from scripts.bench.procs import pct
from scripts.stack.devstack import ROOT

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
