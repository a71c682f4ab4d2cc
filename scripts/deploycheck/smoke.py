"""The smoke step of `make check-deploy`: the container's equivalent. The Dockerfile's CMD run as
is from a clean venv against embedded Redis and Postgres and the offline LLM, then /healthz,
/readyz, the HEALTHCHECK command, and one signed delivery that completes a job. The worker runs
detached (the default): the delivery is answered once the job started, which then ends in the
background.

    PROJECT_PY smoke.py ROOT VENV STAGE
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

root, venv, stage = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(root))  # the project and its dev tools, from the source tree
from lib.queue.signing import sign  # noqa: E402
from lib.queue.wire import message_body  # noqa: E402
from lib.store import Store, migrate  # noqa: E402
from lib.store.backends import PostgresBackend  # noqa: E402
from scripts.stack import embedded  # noqa: E402

# Not the public dev keys: a production worker refuses those (lib/config.py).
CURRENT_KEY, NEXT_KEY = "sig_check_deploy_current_0123456789", "sig_check_deploy_next_0123456789"
# A detached worker publishes its retries and waits: a token, not the public dev one, and a
# broker URL where nothing listens (a job that succeeds at once publishes nothing).
QSTASH_TOKEN = "check-deploy-qstash-token-0123456789"  # noqa: S105
dockerfile = (root / "Dockerfile").read_text()
lines = dockerfile.replace("\\\n", " ").splitlines()
cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
health = next(line for line in lines if line.startswith("HEALTHCHECK "))
health_cmd = json.loads(health[health.index(" CMD ") + 5 :])


def wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready in {timeout}s")


servers, procs = [], []
logs = stage.parent
try:
    redis = embedded.start_redis()
    servers.append(redis)
    postgres = embedded.start_postgres()
    servers.append(postgres)
    migrate.apply(postgres.url)
    llm_port, port = embedded.free_port(), embedded.free_port()
    llm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.fakes.offline_llm",
            "--port",
            str(llm_port),
            "--tokens-per-second",
            "2000",
        ],
        cwd=root,
        stdout=open(logs / "llm.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    procs.append(llm)
    wait(f"http://127.0.0.1:{llm_port}/healthz", llm)
    worker_url = f"http://127.0.0.1:{port}"
    env = {
        "PATH": f"{venv}/bin:/usr/bin:/bin",
        "HOME": str(logs),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "APP_ENV": "production",
        "LOG_FORMAT": "json",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "8",
        "WORKER_DRAIN_SECONDS": "3",
        "REDIS_URL": redis.url,
        "DATABASE_URL": postgres.url,
        "WORKER_URL": worker_url,
        "QSTASH_TOKEN": QSTASH_TOKEN,
        "QSTASH_URL": "http://127.0.0.1:9",
        "QSTASH_CURRENT_SIGNING_KEY": CURRENT_KEY,
        "QSTASH_NEXT_SIGNING_KEY": NEXT_KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "OPENAI_API_KEY": "offline",
        "LLM_MODEL_FREE": "openai:offline",
        "LLM_MODEL_PAID": "openai:offline",
    }
    print(f"  CMD {' '.join(cmd)}  (cwd: the Dockerfile's copies, PATH: the clean venv)")
    worker = subprocess.Popen(
        cmd,
        cwd=stage,
        env=env,
        stdout=open(logs / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(worker)
    print("  /healthz", wait(f"{worker_url}/healthz", worker).json())
    print("  /readyz", wait(f"{worker_url}/readyz", worker).json())
    subprocess.run(health_cmd, cwd=stage, env=env, check=True, timeout=10)
    print("  HEALTHCHECK command: exit 0")

    store = Store(PostgresBackend(postgres.url), initial_coins=5, free_daily=3)
    job_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = store.submit(
        job_id=job_id,
        user_id=user_id,
        kind="job_match",
        tier="paid",
        cost=1,
        input={
            "resume_text": "Backend engineer: Python, Flask, Postgres, Redis.",
            "job_description": "Senior Python engineer: Flask, Postgres, Redis, queues.",
        },
        idempotency_key=None,
        request_hash="check-deploy",
    )
    assert created["outcome"] == "created", created
    url = f"{worker_url}/v1/execute"
    body = message_body(job_id, user_id, "paid", 3)
    headers = {
        "Content-Type": "application/json",
        "Upstash-Retried": "0",
        "Upstash-Message-Id": f"msg_{job_id}",
    }
    forged = requests.post(
        url,
        data=body,
        headers={
            **headers,
            "Upstash-Signature": sign("sig_not_a_key_of_this_worker_0123456789", url, body),
        },
        timeout=10,
    )
    assert forged.status_code == 401, forged.text
    response = requests.post(
        url,
        data=body,
        timeout=120,
        headers={**headers, "Upstash-Signature": sign(CURRENT_KEY, url, body)},
    )
    deadline = time.monotonic() + 120
    job = store.get_job(job_id, user_id)
    while job.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = store.get_job(job_id, user_id)
    print(
        f"  signed delivery -> {response.status_code}; job {job.status},"
        f" result keys {sorted(job.result or {})}"
    )
    assert response.status_code == 200 and job.status == "succeeded" and job.result, response.text
    again = requests.post(
        url,
        data=body,
        timeout=30,
        headers={**headers, "Upstash-Signature": sign(NEXT_KEY, url, body)},
    )
    assert again.status_code == 200 and store.get_job(job_id, user_id).attempts == job.attempts, (
        again.text
    )
    print("  duplicate delivery (next signing key) -> 200, not run again")
    counted = 'cs_job_attempts_total{kind="job_match",outcome="succeeded",tier="paid"} 1.0'
    metrics = requests.get(f"{worker_url}/metrics", timeout=5).text
    while counted not in metrics and time.monotonic() < deadline:  # the background job's end
        time.sleep(0.2)
        metrics = requests.get(f"{worker_url}/metrics", timeout=5).text
    assert counted in metrics, metrics
    print("  /metrics counts the attempt")
    store.close()
    os.killpg(worker.pid, signal.SIGTERM)
    code = worker.wait(60)
    assert code == 0, f"gunicorn exited {code} after SIGTERM"
    print("  SIGTERM: gunicorn stopped cleanly")
except BaseException:
    for name in ("worker.log", "llm.log"):
        if (logs / name).exists():
            print(f"--- {name}", (logs / name).read_text()[-4000:], sep="\n", file=sys.stderr)
    raise
finally:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(10)
    for server in reversed(servers):
        server.stop()
