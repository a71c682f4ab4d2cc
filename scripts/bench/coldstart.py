"""Cold start as a user feels it, on the adapters Vercel runs, and a submit's round trips.

`python -m scripts.bench.coldstart` (also run by `make bench`, section `cold`):

1. **First answer of a fresh function process.** For each `api/` function, a fresh `python`
   process imports the function module and serves one real request through its WSGI app, as
   Vercel's runtime does on a cold start: a submit for `api.jobs`, `GET /api/me`, the first event
   frame of a job's stream for `api.events`, `GET /api/health`, the OpenAPI document. The
   services are the production adapters: Upstash REST (`upstash-redis`, through
   scripts/fakes/upstash_standin.py) and supabase-py (through
   scripts/fakes/postgrest_standin.py) on real Redis and Postgres, and the QStash SDK publishing
   to the dev broker. The interpreter and the packages are Vercel's: Python 3.12 when pyenv has
   it, in a virtualenv holding exactly
   `requirements.txt` (`.venv-vercel`, built once, with pip's bytecode), and our sources'
   bytecode is compiled ahead, as Vercel's builder does with `VERCEL_PYTHON_COMPILEALL=1`
   (`precompile`). The time runs from the spawn to the moment the child
   has the whole answer (its interpreter's exit is not counted). Medians over several runs,
   with a bare Flask app's first answer measured the same way in the same run as the baseline.
2. **A submit's sequential round trips**, with each stand-in and the broker 20 ms away
   (`scripts/fakes/pacing.py`): the requests they saw during one warm submit, and its time.

What it runs on (Vercel's Python, the services, a warm producer) is
scripts/bench/coldstart_setup.py. Figures go to bench/coldstart.json (and into `make bench`'s
results); docs/performance.md explains them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from statistics import median
from typing import Any

from scripts.bench.coldstart_setup import (
    BODY,
    OUT,
    ROOT,
    Services,
    bearer,
    checkout,
    close_producer,
    precompile,
    say,
    services,
    submit,
    vercel_python,
)

TARGET_MS = 400


FUNCTIONS = ["api.jobs", "api.events", "api.me", "api.health", "api.openapi"]


_BARE = (
    "from flask import Flask\napp = Flask('bare')\n@app.get('/')\ndef root():\n    return 'ok'\n"
)


# The child: import the function, serve one request through its WSGI app as Vercel's runtime
# does (werkzeug's environ builder, not Flask's test client, which imports click's test runner),
# report, and leave at once.
_CHILD = """
import sys, time
began = time.perf_counter()
from {module} import app
imported = time.perf_counter()
from werkzeug.test import EnvironBuilder, run_wsgi_app
body = {body!r} if {method!r} == "POST" else None
environ = EnvironBuilder({path!r}, method={method!r}, headers={headers!r}, json=body).get_environ()
chunks, status, _ = run_wsgi_app(app, environ)
if not status.startswith(("200", "202")):
    sys.exit(status + " " + b"".join(chunks).decode()[:300])
seen = b""
for chunk in chunks:  # the whole answer, or an event stream up to its first event frame
    seen += chunk
    if {buffered!r} is False and (b"\\nevent: " in seen or seen.startswith(b"id: ")):
        break
else:
    if {buffered!r} is False:
        sys.exit("the stream ended without an event")
answered = time.perf_counter()
print(round((imported - began) * 1000, 1), round((answered - imported) * 1000, 1), flush=True)
import os
os._exit(0)
"""


def _request(module: str, svc: Services) -> tuple[str, str, dict[str, str], bool]:
    """(method, path, headers, buffered) of the first real request of `module`."""
    user = str(uuid.uuid4())
    if module == "api.jobs":
        return "POST", "/api/jobs", bearer(user), True
    if module == "api.me":
        return "GET", "/api/me", bearer(user), True
    if module == "api.health":
        return "GET", "/api/health", {}, True
    if module == "api.openapi":
        return "GET", "/api/openapi.json", {}, True
    if module == "api.events":
        job_id, token = submit(svc, user)
        return "GET", f"/api/jobs/{job_id}/events?token={token}", {}, False
    return "GET", "/", {}, True


def first_answer(
    python: Path, module: str, svc: Services, scratch: Path, root: Path = ROOT
) -> dict[str, float]:
    """Spawn a fresh process that imports `module` from the sources under `root` and serves
    its first request; times in ms."""
    method, path, headers, buffered = _request(module, svc)
    code = _CHILD.format(
        module=module, method=method, path=path, headers=headers, body=BODY, buffered=buffered
    )
    env = svc.env()
    env["PYTHONPATH"] = f"{root}{os.pathsep}{scratch}"
    began = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        [str(python), "-c", code],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    total = (time.perf_counter() - began) * 1000
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0 or not line.strip():
        raise RuntimeError(f"{module}: the first request failed: {err.strip()[-2000:]}")
    imported, served = (float(x) for x in line.split())
    return {"total": total, "import": imported, "first_request": served}


def cold_start(
    python: Path, svc: Services, rounds: int, against: str | None = None
) -> dict[str, Any]:
    """Median first answers of each function and of a bare Flask app, interleaved per round so
    that a busy moment of a shared machine falls on all of them alike; with `against`, each
    function of that git revision too (`<module>@<rev>`), in the same rounds."""
    scratch = OUT / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "bare.py").write_text(_BARE)
    roots = {"": ROOT}
    if against:
        roots[f"@{against}"] = checkout(against)
    precompile(python, [p for r in roots.values() for p in (r / "api", r / "lib")])
    precompile(python, [scratch / "bare.py"])
    runs_of = [("bare", "bare", ROOT)]
    runs_of += [(m + tag, m, root) for m in FUNCTIONS for tag, root in roots.items()]
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs_of}
    for _ in range(rounds):
        for name, module, root in runs_of:
            samples[name].append(first_answer(python, module, svc, scratch, root))
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        out[name] = {
            key + "_ms_p50": round(median(r[key] for r in runs), 1)
            for key in ("total", "import", "first_request")
        }
        out[name]["runs"] = len(runs)
    bare = out["bare"]["total_ms_p50"]
    for name in samples:
        if name != "bare":
            out[name]["vs_bare"] = round(out[name]["total_ms_p50"] / bare, 2)
    return out


def round_trips(svc: Services, delay_ms: float, rounds: int) -> dict[str, Any]:
    """A warm submit with every stand-in and the broker `delay_ms` away: the requests they saw
    (which are its sequential round trips: the producer waits for each) and its time."""
    submit(svc, str(uuid.uuid4()))  # warm: clients built, scripts loaded
    svc.set_delay(delay_ms)
    try:
        times, counts, paths = [], [], []
        for _ in range(rounds):
            marks = {name: p.count() for name, p in svc.paced.items()}
            began, since = time.perf_counter(), time.monotonic()
            submit(svc, str(uuid.uuid4()))
            times.append((time.perf_counter() - began) * 1000)
            # Requests that began during the submit (an earlier child's stream may end now).
            seen = sorted(
                (s.started, name, s.path)
                for name, p in svc.paced.items()
                for s in p.since(marks[name])
                if s.started >= since
            )
            counts.append(len(seen))
            paths = [f"{name} {path}" for _, name, path in seen]
    finally:
        svc.set_delay(0)
    return {
        "delay_ms": delay_ms,
        "round_trips": max(counts),
        "requests": paths,
        "submit_ms_p50": round(median(times), 1),
        "floor_ms": round(max(counts) * delay_ms, 1),
    }


def run(
    quick: bool = False,
    python_version: str = "3.12",
    against: str | None = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Both measurements; returns the figures (also written to bench/coldstart.json)."""
    python = vercel_python(python_version)
    version = subprocess.run(  # noqa: S603
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load_start = [round(x, 1) for x in os.getloadavg()]
    with services() as svc:
        say(f"first answers on the production adapters (Python {version}, requirements.txt)")
        try:
            cold = cold_start(python, svc, rounds or (3 if quick else 9), against)
            say("a submit's round trips, 20 ms per request")
            trips = round_trips(svc, 20.0, 3 if quick else 10)
        finally:
            close_producer()
    results = {
        "python": version,
        "load_average_start": load_start,
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "first_answer": cold,
        "submit": trips,
        "target_ms": TARGET_MS,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "coldstart.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results), flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    """The figures as the Markdown table of docs/performance.md."""
    cold = results["first_answer"]
    bare = cold["bare"]["total_ms_p50"]
    lines = [
        "| function | first answer p50 ms (x bare Flask) | of which import / first request ms |",
        "|---|---|---|",
    ]
    for name, d in cold.items():
        if name == "bare":
            continue
        lines.append(
            f"| {name} | {d['total_ms_p50']} (x{d['vs_bare']}) "
            f"| {d['import_ms_p50']} / {d['first_request_ms_p50']} |"
        )
    lines.append(f"| bare Flask | {bare} | {cold['bare']['import_ms_p50']} / "
                 f"{cold['bare']['first_request_ms_p50']} |")  # fmt: skip
    s = results["submit"]
    lines += [
        "",
        f"Submit, every service {s['delay_ms']:g} ms away: {s['round_trips']} sequential round "
        f"trips ({', '.join(s['requests'])}), p50 {s['submit_ms_p50']} ms "
        f"(floor {s['floor_ms']} ms).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.coldstart", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 runs per figure instead of 9")
    parser.add_argument("--python", default="3.12", help="the functions' Python (default 3.12)")
    parser.add_argument(
        "--against", metavar="REV", help="also time each function of git revision REV"
    )
    parser.add_argument("--rounds", type=int, help="runs per figure (default 9, --quick 3)")
    args = parser.parse_args(argv)
    run(args.quick, args.python, args.against, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
