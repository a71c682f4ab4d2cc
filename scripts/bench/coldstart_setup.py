"""What the cold-start bench (scripts/bench/coldstart.py) runs on.

- Vercel's interpreter and packages: a virtualenv of Python 3.12 (pyenv's when it has it) holding
  exactly `requirements.txt` (`vercel_python`), our sources' bytecode compiled ahead as Vercel's
  builder does (`precompile`), and a git revision's sources to compare with (`checkout`).
- The production adapters' far ends on loopback (`services`): embedded Redis and Postgres
  (migrated), the Upstash REST and PostgREST stand-ins and the dev broker, each behind a
  `Paced` wrapper; the environment a function process gets (`Services.env`).
- A warm producer in this process on the same services (`submit`, `close_producer`), for the
  jobs a stream needs and for counting a warm submit's round trips.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
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


UPSTASH_TOKEN = "bench-upstash-token"  # noqa: S105


SERVICE_ROLE_KEY = "bench-service-role-key"


JWT_SECRET = secrets.token_urlsafe(32)  # a production-like secret, not the public dev one


BODY = {
    "kind": "job_match",
    "input": {"resume_text": "Python, Flask, Redis, Postgres.", "job_description": "Backend."},
}


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


def bearer(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_access_token(user_id, JWT_SECRET)}"}


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


def submit(svc: Services, user: str) -> tuple[str, str]:
    """Submit a job through the warm producer; returns its id and stream token."""
    submitted = _producer(svc).submit(user, BODY, None)
    return submitted.job.id, submitted.stream_token


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


def close_producer() -> None:
    """Close the warm producer's clients, if one was built."""
    warm = _WARM.pop("producer", None)
    if warm is not None:
        warm.store.close()
        warm.state.close()
