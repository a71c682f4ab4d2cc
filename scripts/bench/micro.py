"""The sections without a stack: 1. cold start of each `api/` function, 1b. the worker's CPU per
streamed token (its per-token path against reading the model's stream alone)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


# 1b. The worker's CPU per streamed token -------------------------------------------------------
TOKEN_PATHS = (
    ("worker", "gevent"),
    ("worker", "threads"),
    ("sdk-models", "gevent"),
    ("raw-lines", "gevent"),
    ("raw-lines-paced", "gevent"),
)


def token_cpu(quick: bool) -> dict[str, Any]:
    """CPU per streamed token of the worker's per-token path (`scripts.bench.token_path`): N
    concurrent streams at 20 tokens/s from the offline LLM (another process) through lib.llm, a
    handler and JobEvents to a real Redis, under gevent (the default worker class) and threads;
    against reading alone (the SDK's chunk models, the raw lines lib/llm.py reads, and those
    read at the flush cadence). Each path runs in a process of its own, the paths alternate,
    and each figure is the median over the rounds."""
    streams, rounds = (50, 1) if quick else (100, 3)
    say(f"worker CPU per token: {streams} streams at 20 tokens/s, {rounds} round(s) per path")
    from scripts.stack import embedded

    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "scripts.fakes.offline_llm", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis = embedded.start_redis()
    env = {**os.environ, "APP_ENV": "development", "HOST": "127.0.0.1"}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        load = [round(x, 1) for x in os.getloadavg()]
        for _ in range(rounds):
            for path, mode in TOKEN_PATHS:
                args = ["--llm", f"http://127.0.0.1:{port}/v1", "--redis", redis.url]
                args += ["--path", path, "--mode", mode, "--streams", str(streams)]
                args += ["--tokens", "100", "--slow", "50"]
                proc = subprocess.run(  # noqa: S603
                    [sys.executable, "-m", "scripts.bench.token_path", *args],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs.setdefault(f"{path}/{mode}", []).append(json.loads(proc.stdout))
    finally:
        server.terminate()
        server.wait(10)
        redis.stop()
    out: dict[str, Any] = {
        "streams": streams,
        "rounds": rounds,
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
    }
    for key, done in runs.items():
        values = [r["cpu_us_per_token"] for r in done]
        out[key] = {
            "cpu_us_per_token_p50": round(pct(values, 50) or 0, 1),
            "cpu_us_per_token": values,
            "tokens": [r["tokens"] for r in done],
            "failed": sum(r["failed"] for r in done),
        }
    worker = out["worker/gevent"]["cpu_us_per_token_p50"]
    out["worker_vs_sdk_models"] = ratio(out["sdk-models/gevent"]["cpu_us_per_token_p50"], worker)
    out["paced_vs_raw_lines"] = ratio(
        out["raw-lines/gevent"]["cpu_us_per_token_p50"],
        out["raw-lines-paced/gevent"]["cpu_us_per_token_p50"],
    )
    return out
