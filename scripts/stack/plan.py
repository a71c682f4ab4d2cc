"""Which child processes a stack runs, and how each one starts and shows it is healthy.

`components(stack)` is the plan of `Stack.start()` (scripts/stack/devstack.py), in start order:
the offline LLM (unless a real OPENAI_API_KEY is configured), the dev broker (unless
QSTASH_MODE=direct or QSTASH_URL points elsewhere), the Storage stand-in (unless a real Storage
is configured), the cloud profile's Upstash REST and PostgREST stand-ins, each worker box
(gunicorn) and the producer (gunicorn). It reads the stack's ports, profile and environment
(`Stack._environment`, which decides what is needed); it starts nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lib.config import DEV_JWT_SECRET
from scripts.stack import cloud_profile
from scripts.stack.components import STATE_DIR, Component

if TYPE_CHECKING:
    from scripts.stack.devstack import Stack


def components(stack: Stack) -> list[Component]:
    py = sys.executable
    gunicorn = [py, "-m", "gunicorn"]
    plan = []
    if stack.use_offline_llm:
        plan.append(
            Component(
                "llm",
                [py, "-m", "scripts.fakes.offline_llm", "--port", str(stack.ports.llm)],
                f"http://127.0.0.1:{stack.ports.llm}/healthz",
            )
        )
    if stack.use_broker:
        plan.append(
            Component(
                "broker",
                [py, "-m", "scripts.fakes.dev_broker", "--port", str(stack.ports.broker)],
                f"{stack.broker_url}/healthz",
            )
        )
    if stack.use_storage:
        plan.append(storage(stack))
    if stack.cloud:
        plan += standins(stack)
    for index, url in enumerate(stack.worker_urls):
        port = url.rsplit(":", 1)[1]
        plan.append(
            Component(
                "worker" if index == 0 else f"worker{index + 1}",
                [*gunicorn, "-c", "worker/gunicorn.conf.py", "worker.wsgi:app"],
                f"{url}/readyz",
                env={
                    **(cloud_profile.worker_env(stack.env["DATABASE_URL"]) if stack.cloud else {}),
                    **({"WORKER_URL": url, "PORT": port} if index else {}),
                },
            )
        )
    plan.append(
        Component(
            "producer",
            [
                *gunicorn,
                "--bind",
                f"127.0.0.1:{stack.ports.producer}",
                "--worker-class",
                "gthread",
                "--threads",
                # Each open SSE stream holds a thread (Vercel runs one instance per stream).
                stack.env.get("PRODUCER_THREADS", "64"),
                "--workers",
                "1",
                "--graceful-timeout",
                "5",
                # Vercel routes rewrites with the rewritten path in backend-framework
                # projects; the cloud profile does so, the local one keeps the original.
                "api._local:rewritten_app" if stack.cloud else "api._local:app",
            ],
            f"{stack.producer_url}/api/health?deep=1",
            env=(
                cloud_profile.producer_env(stack.upstash_url, stack.postgrest_url)
                if stack.cloud
                else {}
            ),
        )
    )
    return plan


def storage(stack: Stack) -> Component:
    """The Storage stand-in (scripts/fakes/storage_standin.py), objects under .devstack/,
    its bucket limited as docs/deploy.md sets the real one up."""
    root = Path(stack.env.get("STORAGE_STANDIN_ROOT") or STATE_DIR / "storage")
    return Component(
        "storage",
        [
            sys.executable,
            "-m",
            "scripts.fakes.storage_standin",
            "--port",
            str(stack.ports.storage),
            "--root",
            str(root),
            "--jwt-secret",
            DEV_JWT_SECRET,
        ],
        f"{stack.storage_url}/status",
    )


def standins(stack: Stack) -> list[Component]:
    """The Upstash REST and PostgREST stand-ins, in front of the stack's real servers."""
    py = sys.executable
    token, key = cloud_profile.UPSTASH_TOKEN, cloud_profile.SERVICE_ROLE_KEY
    return [
        Component(
            "upstash",
            [py, "-m", "scripts.fakes.upstash_standin", "--port", str(stack.ports.upstash)],
            f"{stack.upstash_url}/ping",
            env={"UPSTASH_REDIS_REST_TOKEN": token},
            health_headers={"Authorization": f"Bearer {token}"},
        ),
        Component(
            "postgrest",
            [py, "-m", "scripts.fakes.postgrest_standin", "--port", str(stack.ports.postgrest)],
            f"{stack.postgrest_url}/rest/v1/rpc/cs_ping",
            env={"SUPABASE_SERVICE_ROLE_KEY": key},
            health_headers={"apikey": key},
        ),
    ]
