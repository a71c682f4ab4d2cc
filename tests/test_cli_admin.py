"""`cs dlq` and `cs doctor`, run as a user runs them (a subprocess), against a stack started the
way `make dev` does.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import pytest
from fixtures import cli_suite
from helpers.cli import Cli
from helpers.net import free_port, serve_wsgi, wait_for

from lib.queue.signing import DEV_TOKEN
from scripts.stack.devstack import Stack

pytestmark = pytest.mark.e2e

stack = cli_suite.stack  # this module's own stack
cs = cli_suite.cs


class Recorder:
    """A destination that records what it receives."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        self.requests.append((headers, body))
        self.arrived.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def test_dlq_list_and_redrive_move_a_dead_letter_to_a_live_destination(
    cs: Cli, stack: Stack
) -> None:
    from qstash import QStash

    qstash = QStash(DEV_TOKEN, base_url=stack.broker_url)
    body = json.dumps({"job_id": str(uuid.uuid4()), "note": "dead letter"})
    sent = qstash.message.publish(
        url=f"http://127.0.0.1:{free_port()}/nobody-listens",
        body=body,
        content_type="application/json",
        retries=0,
    )

    def dead_letter() -> Any:
        page = qstash.dlq.list(filter={"message_id": sent.message_id})
        return page.messages[0] if page.messages else None

    dlq_id = wait_for(dead_letter, 10, what="the message in the DLQ").dlq_id
    listed = json.loads(cs.ok("dlq", "list", "--json").stdout)
    assert dlq_id in {m["dlq_id"] for m in listed}
    assert dlq_id in cs.ok("dlq", "list").stdout
    recorder = Recorder()
    with serve_wsgi(recorder) as url:
        done = cs.ok("dlq", "redrive", dlq_id, "--to", f"{url}/hook")
        assert dlq_id in done.stdout
        assert recorder.arrived.wait(10), "the redriven message never arrived"
    headers, received = recorder.requests[0]
    assert json.loads(received) == json.loads(body)
    assert headers["content-type"] == "application/json" and headers["upstash-signature"]
    assert dlq_id not in {m["dlq_id"] for m in json.loads(cs.ok("dlq", "list", "--json").stdout)}
    missing = cs("dlq", "redrive", dlq_id)
    assert missing.returncode == 1


def test_doctor_prints_a_table_and_exits_0_when_everything_is_up(cs: Cli) -> None:
    done = cs("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = ["config (api)", "config (worker)", "qstash plan", "redis", "database", "broker"]
    for row in [*rows, "llm (openai)", "producer", "worker", "all good"]:
        assert row in done.stdout, row
    assert "FAIL" not in done.stdout


def test_doctor_exits_1_and_names_what_is_wrong(cs: Cli) -> None:
    wrong_db = f"postgresql://postgres:secret-pw@127.0.0.1:{free_port()}/nothing"
    done = cs("doctor", env={"DATABASE_URL": wrong_db})
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if "database" in line)
    assert "FAIL" in row and "secret-pw" not in done.stdout
    assert "1 problem(s): database" in done.stdout
    misconfigured = cs("doctor", "--role", "api", env={"WORKER_URL": "", "QSTASH_TOKEN": ""})
    assert misconfigured.returncode == 1
    assert "WORKER_URL must be" in misconfigured.stdout
    assert "QSTASH_TOKEN is required" in misconfigured.stdout


def rows(table: str) -> dict[str, str]:
    """`cs doctor`'s table: each check's name and its whole line."""
    cells = [line.split("│") for line in table.splitlines() if line.count("│") >= 4]
    return {cell[1].strip(): "│".join(cell) for cell in cells if cell[1].strip()}


def test_doctor_checks_what_a_detached_worker_needs_to_publish(cs: Cli) -> None:
    done = cs("doctor", "--role", "worker", env={"EXECUTION_MODE": "detached", "QSTASH_TOKEN": ""})
    assert done.returncode == 1
    assert "set QSTASH_TOKEN on the worker" in done.stdout
    # The worker publishes its retries and waits: the broker must take its token.
    assert "FAIL" in rows(done.stdout)["broker"]
    assert "FAIL" not in rows(cs("doctor", "--role", "worker").stdout).get("broker", "")
    inline = cs("doctor", "--role", "worker", env={"EXECUTION_MODE": "inline", "QSTASH_TOKEN": ""})
    assert inline.returncode == 0, inline.stdout
    assert "broker" not in rows(inline.stdout)


def test_doctor_names_every_setting_the_qstash_plan_cannot_honour(cs: Cli) -> None:
    # Inline, said explicitly: a delivery holds a slot of the plan's parallelism per model call.
    inline = {"EXECUTION_MODE": "inline"}
    done = cs("doctor", env={**inline, "QSTASH_PLAN": "free", "JOB_TIMEOUT_SECONDS": "900"})
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if "qstash plan" in line)
    assert "FAIL" in row and "free" in row
    for problem in ("JOB_TIMEOUT_SECONDS=900", "LLM_MAX_CONCURRENCY_PAID=32"):
        assert problem in done.stdout, problem
    assert "qstash plan" in done.stdout.splitlines()[-1]
    # Detached, a delivery ends once its job started: the model limits are the worker's own.
    detached = cs(
        "doctor",
        env={"QSTASH_PLAN": "free", "JOB_TIMEOUT_SECONDS": "900"} | {"EXECUTION_MODE": "detached"},
    )
    assert "JOB_TIMEOUT_SECONDS=900" in detached.stdout
    assert "LLM_MAX_CONCURRENCY_PAID" not in detached.stdout
