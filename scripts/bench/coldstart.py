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

Figures go to bench/coldstart.json (and into `make bench`'s results); docs/performance.md
explains them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from werkzeug.serving import make_server

from lib.auth import mint_access_token
from lib.queue.signing import DEV_TOKEN
from lib.store import migrate
from scripts.fakes.pacing import Paced
from scripts.stack import embedded

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench"
VENV = ROOT / ".venv-vercel"
TARGET_MS = 400
FUNCTIONS = ["api.jobs", "api.events", "api.me", "api.health", "api.openapi"]
UPSTASH_TOKEN = "bench-upstash-token"  # noqa: S105
SERVICE_ROLE_KEY = "bench-service-role-key"
JWT_SECRET = secrets.token_urlsafe(32)  # a production-like secret, not the public dev one
BODY = {
    "kind": "job_match",
    "input": {"resume_text": "Python, Flask, Redis, Postgres.", "job_description": "Backend."},
}

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


def say(message: str) -> None:
    print(f"[bench:cold] {message}", flush=True)


def _interpreter(version: str) -> str:
    """Python `version` ("3.12", Vercel's runtime, by default): pyenv's, when installed; else
    `/usr/bin/python<version>`; else this interpreter."""
    found = subprocess.run(  # noqa: S603
        ["pyenv", "prefix", version], capture_output=True, text=True, check=False
    ) if shutil.which("pyenv") else None  # fmt: skip
    if found and found.returncode == 0:
        candidate = Path(found.stdout.strip().splitlines()[0]) / "bin" / "python3"
        if candidate.exists():
            return str(candidate)
    system = Path(f"/usr/bin/python{version}")
    return str(system) if system.exists() else sys.executable


def vercel_python(version: str = "3.12") -> Path:
    """A virtualenv of Python `version` with exactly requirements.txt (what Vercel installs for
    api/), built once and again whenever requirements.txt changes. Returns its python."""
    venv = VENV if version == "3.12" else VENV.with_name(f"{VENV.name}-{version}")
    requirements = ROOT / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / ".requirements.sha256"
    python = venv / "bin" / "python"
    if stamp.exists() and stamp.read_text() == digest and python.exists():
        return python
    say(f"building {venv.name} from requirements.txt (once)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([_interpreter(version), "-m", "venv", str(venv)], check=True)  # noqa: S603
    subprocess.run(  # noqa: S603
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True
    )
    stamp.write_text(digest)
    return python


@dataclass
class Services:
    """The production adapters' far ends, on loopback, each behind a `Paced` wrapper."""

    upstash_url: str
    postgrest_url: str
    broker_url: str
    paced: dict[str, Paced]
    prefix: str

    def env(self) -> dict[str, str]:
        """A function process's environment: Upstash REST, Supabase, QStash; no TCP URLs."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REDIS", "DATABASE", "UPSTASH", "SUPABASE", "QSTASH", "VIRTUAL"))
        }
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONDONTWRITEBYTECODE": "1",  # a function's filesystem is read-only
                "UPSTASH_REDIS_REST_URL": self.upstash_url,
                "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN,
                "SUPABASE_URL": self.postgrest_url,
                "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
                "SUPABASE_JWT_SECRET": JWT_SECRET,
                "QSTASH_URL": self.broker_url,
                "QSTASH_TOKEN": DEV_TOKEN,  # the dev broker's: a development process on loopback
                "APP_ENV": "development",
                "HOST": "127.0.0.1",
                "WORKER_URL": "http://127.0.0.1:9",  # nothing listens: deliveries just fail
                "JOB_RETRIES": "0",
                "REDIS_PREFIX": self.prefix,
                "QUEUE_MAX_PAID": "100000",
                "LOG_LEVEL": "WARNING",
            }
        )
        return env

    def set_delay(self, delay_ms: float) -> None:
        for paced in self.paced.values():
            paced.delay_ms = delay_ms


def _serve(app: Any, stack: ExitStack) -> str:
    import threading

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return f"http://127.0.0.1:{server.server_port}"


@contextmanager
def services() -> Iterator[Services]:
    """Embedded Redis and Postgres (migrated), the two stand-ins and the dev broker."""
    from scripts.fakes import dev_broker, postgrest_standin, upstash_standin

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per request
    with ExitStack() as stack:
        redis_server = embedded.start_redis()
        stack.callback(redis_server.stop)
        pg = embedded.start_postgres()
        stack.callback(pg.stop)
        migrate.apply(pg.url)
        upstash = upstash_standin.create_app(redis_server.url, UPSTASH_TOKEN)
        stack.callback(upstash_standin.close, upstash)
        postgrest = postgrest_standin.create_app(pg.url, SERVICE_ROLE_KEY)
        stack.callback(postgrest_standin.close, postgrest)
        broker = dev_broker.create_app()
        stack.callback(broker.extensions["dev_broker"].stop)
        broker_paced = Paced(broker.wsgi_app)
        broker.wsgi_app = broker_paced  # type: ignore[method-assign]
        # At the end, streams that the children left open break as their Redis goes away.
        stack.callback(logging.getLogger("werkzeug").setLevel, logging.CRITICAL)
        yield Services(
            upstash_url=_serve(upstash, stack),
            postgrest_url=_serve(postgrest, stack),
            broker_url=_serve(broker, stack),
            paced={
                "upstash": upstash.extensions["pacing"],
                "postgrest": postgrest.extensions["pacing"],
                "broker": broker_paced,
            },
            prefix=f"bench-cold-{uuid.uuid4().hex[:6]}:",
        )


def _bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_access_token(user_id, JWT_SECRET)}"}


def _request(module: str, svc: Services) -> tuple[str, str, dict[str, str], bool]:
    """(method, path, headers, buffered) of the first real request of `module`."""
    user = str(uuid.uuid4())
    if module == "api.jobs":
        return "POST", "/api/jobs", _bearer(user), True
    if module == "api.me":
        return "GET", "/api/me", _bearer(user), True
    if module == "api.health":
        return "GET", "/api/health", {}, True
    if module == "api.openapi":
        return "GET", "/api/openapi.json", {}, True
    if module == "api.events":
        job_id, token = _submit(svc, user)
        return "GET", f"/api/jobs/{job_id}/events?token={token}", {}, False
    return "GET", "/", {}, True


_WARM: dict[str, Any] = {}


def _producer(svc: Services) -> Any:
    """A warm producer in this process, on the same services and settings as the children."""
    if "producer" not in _WARM:
        from lib import auth, config, state, store
        from lib.queue.producer import QStashPublisher
        from lib.service import Producer

        prefixes = ("UPSTASH", "SUPABASE", "QSTASH", "WORKER", "JOB", "REDIS_PREFIX", "QUEUE")
        prefixes += ("APP_ENV", "HOST")
        settings = config.load(
            "api",
            redis_url="",
            database_url="",
            **{k.lower(): v for k, v in svc.env().items() if k.startswith(prefixes)},
        )
        _WARM["producer"] = Producer(
            settings,
            store.from_settings(settings),
            state.from_settings(settings),
            QStashPublisher(settings),
            auth.from_settings(settings),
        )
    return _WARM["producer"]


def _submit(svc: Services, user: str) -> tuple[str, str]:
    """Submit a job through the warm producer; returns its id and stream token."""
    submitted = _producer(svc).submit(user, BODY, None)
    return submitted.job.id, submitted.stream_token


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


def precompile(python: Path, paths: list[Path]) -> None:
    """Bytecode for our own sources, beside them in `__pycache__`, as Vercel's Python builder
    ships a function when `VERCEL_PYTHON_COMPILEALL=1` (vercel/vercel#16313, #17196: app and
    vendored packages' bytecode in the bundle; docs/deploy.md sets it). The packages' bytecode
    comes from pip, the standard library's from the interpreter. No `PYTHONPYCACHEPREFIX`: with
    one set, Python looks for every module's bytecode, the standard library's and the
    packages' included, only in that tree, and compiled them all from source on every start
    (about 330 ms of a bare Flask app's 470 here)."""
    subprocess.run(  # noqa: S603
        [str(python), "-m", "compileall", "-q", *map(str, paths)], check=True
    )


def checkout(rev: str) -> Path:
    """The `api/` and `lib/` sources of git revision `rev`, exported under bench/scratch."""
    target = OUT / "scratch" / f"against-{rev}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    tree = subprocess.run(  # noqa: S603
        ["git", "-C", str(ROOT), "archive", rev, "api", "lib"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=tree, check=True)  # noqa: S607
    return target


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
    _submit(svc, str(uuid.uuid4()))  # warm: clients built, scripts loaded
    svc.set_delay(delay_ms)
    try:
        times, counts, paths = [], [], []
        for _ in range(rounds):
            marks = {name: p.count() for name, p in svc.paced.items()}
            began, since = time.perf_counter(), time.monotonic()
            _submit(svc, str(uuid.uuid4()))
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
            warm = _WARM.pop("producer", None)
            if warm is not None:
                warm.store.close()
                warm.state.close()
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
