"""`make demo` on each stack profile: the command itself, on free ports and the suite's servers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lib.handlers import registry
from scripts.stack.demo import KINDS
from scripts.stack.devstack import PROFILES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("profile", PROFILES)
def test_make_demo_runs_one_job_of_each_kind_to_success_and_exits_0(
    profile: str, redis_url: str, database_url: str
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_PREFIX": f"demo-{uuid.uuid4().hex[:6]}:",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "500",
    }
    # What `make demo PROFILE=<profile>` runs, on free ports rather than :3000, :8080, ...
    done = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "scripts.stack.devstack",
            "demo",
            "--profile",
            profile,
            "--free-ports",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"ready ({profile} profile)" in done.stdout
    for kind in KINDS:
        assert f"\n{kind}: job " in done.stdout
    assert "demo: all jobs succeeded" in done.stdout


def test_the_demo_covers_every_registered_kind() -> None:
    assert sorted(KINDS) == sorted(registry())
