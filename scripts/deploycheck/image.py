"""`make check-deploy`'s image step: the worker image, built for real and run as production runs it.

    python -m scripts.deploycheck.image [--keep-logs DIR]

1. Builds the Dockerfile (`scripts/deploycheck/image_build.py`: Docker, else podman from
   Debian's packages).
2. Runs the container read-only with a tmpfs /tmp, as docker-compose.prod.yml does, on the host
   network, inside the local stack of `scripts/stack/devstack.py` in place of its gunicorn worker:
   producer -> dev broker -> the container -> Redis and Postgres (embedded, real servers).
3. Checks: /healthz, /readyz and the image's own HEALTHCHECK; no error line in the container's
   log at start (gunicorn's control socket is off); one job of each kind through the producer,
   as `make demo` submits them; a SIGTERM (`podman stop`) while a job runs drains the worker
   (the job answers the broker retryably, the container exits 0) and the job then succeeds on
   a fresh container; neither the build's CA bundle nor its pip.conf is left in the image.
4. Prints the image's size.

The container gets production settings (APP_ENV=production, fresh signing keys and QStash token,
not the public dev ones; EXECUTION_MODE left at its default, detached) through an env file, as
`env_file: .env.production` gives them on the VPS. Postgres is the embedded server's Unix
socket, bind-mounted into the container.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from lib.auth import mint_access_token
from scripts.deploycheck import image_build
from scripts.stack.demo import SAMPLES, run_demo
from scripts.stack.devstack import Component, Ports, Stack

CONTAINER = "cs-check-deploy-worker"
# Start-up lines that mean something is wrong (gunicorn's own format and our JSON logs).
ERROR_LINE = re.compile(
    r'\[(ERROR|CRITICAL)\]|"level":\s*"(error|critical)"|Traceback|Control server error', re.I
)
SETTINGS_FOR_CONTAINER = re.compile(r"^#?\s?([A-Z][A-Z0-9_]+)=", re.M)


class ContainerStack(Stack):
    """The local stack with its worker replaced by the image, run as compose runs it."""

    def __init__(self, builder: str, image: str, work: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.builder, self.image, self.work = builder, image, work

    def _container_env(self) -> Path:
        """The settings `.env.example` names that this stack sets, as an env file (mode 600)."""
        names = set(SETTINGS_FOR_CONTAINER.findall((image_build.ROOT / ".env.example").read_text()))
        env = {k: v for k, v in self.env.items() if k in names and v}
        socket_dir = re.search(r"host=([^&]+)", env["DATABASE_URL"])
        if socket_dir:  # the embedded Postgres: its socket, mounted at /run/pg
            self.pg_socket = next(Path(socket_dir.group(1)).glob(".s.PGSQL.*"))
            env["DATABASE_URL"] = "postgresql://postgres:@/postgres?host=/run/pg"
        env.update(APP_ENV="production", LOG_FORMAT="json", WEB_CONCURRENCY="2")
        path = self.work / "container.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        path.chmod(0o600)
        return path

    def _plan(self) -> list[Component]:
        plan = [c for c in super()._plan() if c.name != "worker"]
        env_file = self._container_env()
        # As docker-compose.prod.yml: read_only, tmpfs /tmp, env_file.
        argv = [self.builder, "run", "--rm", "--name", CONTAINER, "--network", "host",
                "--read-only", "--tmpfs", "/tmp", "--env-file", str(env_file)]  # fmt: skip  # noqa: S108
        if getattr(self, "pg_socket", None):
            argv.append(f"--volume={self.pg_socket}:/run/pg/{self.pg_socket.name}")
        if self.builder == "podman":
            # --replace clears a container left over from an interrupted run.
            argv += [*image_build.PODMAN_RUN, "--replace"]
        worker = Component("worker", [*argv, self.image], f"{self.worker_url}/readyz")
        return [*plan[:-1], worker, plan[-1]]


def container_log(stack: Stack) -> str:
    assert stack.log_dir is not None
    return (stack.log_dir / "worker.log").read_text(errors="replace")


def check_start(stack: ContainerStack) -> None:
    """/healthz, /readyz, the image's HEALTHCHECK, and a start-up log without an error line."""
    for path in ("/healthz", "/readyz"):
        response = httpx.get(stack.worker_url + path, timeout=5)
        if response.status_code != 200:
            raise SystemExit(f"{path} -> {response.status_code} {response.text}")
        image_build.say(f"{path} -> 200 {response.text.strip()}")
    test = image_build.healthcheck(stack.builder, stack.image)
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        raise SystemExit(f"the image has no HEALTHCHECK ({test}); build with --format docker")
    image_build.run([stack.builder, "exec", CONTAINER, *test[1:]], timeout=30)
    image_build.say("HEALTHCHECK command in the container: exit 0")
    started = container_log(stack)  # what the container (and podman itself) printed so far
    errors = [line for line in started.splitlines() if ERROR_LINE.search(line)]
    if errors:
        raise SystemExit("error lines in the container's log at start:\n" + "\n".join(errors))
    image_build.say(f"container log at start: {len(started.splitlines())} lines, no error line")


def check_jobs(stack: Stack, logs: Path) -> None:
    """One job of each kind, as `make demo` submits them, through the containerized worker."""
    with open(logs / "demo.log", "w") as out, contextlib.redirect_stdout(out):
        code = run_demo(stack.producer_url, stack.env["SUPABASE_JWT_SECRET"])
    lines = (logs / "demo.log").read_text().splitlines()
    for line in lines:
        if re.match(r"^(job_match|resume_customize|interview_prep): job ", line):
            image_build.say(line)
    if code != 0:
        raise SystemExit("a job failed through the container:\n" + "\n".join(lines[-40:]))
    image_build.say(lines[-1])


def check_drain(stack: ContainerStack) -> None:
    """SIGTERM while a job runs: it drains (exit 0), and the job succeeds on a new container."""
    user = str(uuid.uuid4())
    token = mint_access_token(user, stack.env["SUPABASE_JWT_SECRET"])
    resume = (SAMPLES / "resume.txt").read_text() + " [[llm:slow=40]]"
    job_input = {
        "resume_text": resume,
        "job_description": (SAMPLES / "job_description.txt").read_text(),
    }
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.producer_url, headers=headers, timeout=30) as client:
        submitted = client.post("/api/jobs", json={"kind": "job_match", "input": job_input})
        if submitted.status_code != 202:
            raise SystemExit(f"submit -> {submitted.status_code} {submitted.text}")
        job_id = submitted.json()["job"]["id"]
        job = wait_job(client, job_id, lambda j: j["status"] == "running", 60)
        started = time.monotonic()
        image_build.run([stack.builder, "stop", "--time", "60", CONTAINER], timeout=90)
        stopped = time.monotonic() - started
        worker = stack.component("worker")
        assert worker.proc is not None
        code = worker.proc.wait(30)
        if code != 0:
            raise SystemExit(f"the container exited {code} after SIGTERM")
        if not any(
            entry.get("msg") == "draining" and int(entry.get("running") or 0) >= 1  # type: ignore[call-overload]
            for entry in json_lines(container_log(stack))
        ):
            raise SystemExit("the container's log does not show it draining a running job")
        image_build.say(f"SIGTERM with job {job_id} running: drained, exit 0 in {stopped:.1f} s")
        stack.restart("worker")
        job = wait_job(client, job_id, lambda j: j["status"] in ("succeeded", "failed"), 120)
        if job["status"] != "succeeded" or job["attempts"] != 2:
            raise SystemExit(
                f"after the drain, the job is {job['status']} after {job['attempts']} attempts"
            )
        image_build.say("on a fresh container the job succeeded (attempt 2)")


def json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def wait_job(client: httpx.Client, job_id: str, done: object, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/api/jobs/{job_id}").json()["job"]
        if done(job):  # type: ignore[operator]
            return job
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not reach the expected state in {timeout:.0f} s")


def check_build_secrets_left_out(builder: str, image: str) -> None:
    """The pip.conf mounted for the build is not in the image (buildah leaves an empty file),
    and its CA bundle is the base's own, not the host's that was mounted over it."""
    host_ca = image_build.HOST_CA.read_bytes() if image_build.HOST_CA.is_file() else b""
    probe = [builder, "run", "--rm", "--read-only", "--entrypoint", "sh", image, "-c",
             f"test ! -s {image_build.BUILD_PIP_CONF} && cat {image_build.HOST_CA}"]  # fmt: skip
    if builder == "podman":
        probe[2:2] = image_build.PODMAN_RUN
    kept = image_build.run(probe, timeout=60).stdout.encode()
    if host_ca and kept == host_ca:
        raise SystemExit(f"the image keeps the host's CA bundle ({image_build.HOST_CA})")
    image_build.say("no build-time pip.conf or host CA bundle left in the image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.deploycheck.image", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--cache", type=Path, default=image_build.ROOT / ".cache/check-deploy/image"
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep the stack's logs here")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    builder = image_build.pick_builder()
    image = image_build.build(builder, args.cache)
    check_build_secrets_left_out(builder, image)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="cs-image-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    overrides = {
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "LOG_FORMAT": "json",
        "WORKER_DRAIN_SECONDS": "3",
        # As `make demo`: coins for one job of every kind, the pipeline included.
        "INITIAL_COINS": "25",
        # Not the public dev secrets: the container runs with APP_ENV=production. The worker
        # runs detached (the default), publishing its own retries and waits to the dev broker,
        # which takes this token instead of the public dev one.
        "SUPABASE_JWT_SECRET": secrets.token_urlsafe(32),
        "QSTASH_TOKEN": secrets.token_urlsafe(32),
        "QSTASH_CURRENT_SIGNING_KEY": "sig_" + secrets.token_urlsafe(21),
        "QSTASH_NEXT_SIGNING_KEY": "sig_" + secrets.token_urlsafe(21),
    }
    for name in ("REDIS_URL", "DATABASE_URL", "UPSTASH_REDIS_REST_URL", "SUPABASE_URL"):
        overrides.setdefault(name, "")
    ports = Ports.free()
    stack = ContainerStack(
        builder, image, logs, ports=ports, overrides=overrides, log_dir=logs, quiet=True
    )
    try:
        stack.start(timeout=120)
        check_start(stack)
        check_jobs(stack, logs)
        check_drain(stack)
    except BaseException:
        print(f"--- container log ({logs / 'worker.log'})", file=sys.stderr)
        with contextlib.suppress(OSError):
            print(container_log(stack)[-4000:], file=sys.stderr)
        raise
    finally:
        stack.stop()
        subprocess.run([builder, "rm", "--force", CONTAINER], capture_output=True)  # noqa: S603
    size = image_build.image_size(builder, image)
    packed = image_build.compressed_size(builder, image)
    image_build.say(
        f"image {image}: {size / 1e6:.0f} MB uncompressed, {packed / 1e6:.0f} MB gzipped"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
