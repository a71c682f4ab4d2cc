"""What an operator watches: /metrics of the real gunicorn worker (two processes), the Grafana
dashboard in docs/grafana/, the job fields of the JSON logs, and the optional OpenTelemetry traces.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from flask import Flask, request
from helpers.net import free_port, serve_wsgi, wait_for
from helpers.stack import RESUME, User, follow
from helpers.worker import deliver
from prometheus_client.parser import text_string_to_metric_families

from lib import tracing
from lib.config import load
from lib.errors import ConfigError
from lib.logs import user_hash
from scripts.stack.devstack import Ports, Stack

if TYPE_CHECKING:
    from helpers.worker import WorkerEnv


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "careershaper-worker.json"
KINDS = ["job_match", "resume_customize", "interview_prep"]


# The running stack: one job of each kind, and one submit refused by admission -----------------


class Ran:
    """What the module's scenario did, and the stack it did it on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.users = {kind: User(stack.producer_url) for kind in KINDS}
        self.job_ids: dict[str, str] = {}
        self.refused: httpx.Response | None = None

    def metrics(self) -> dict[str, list[Any]]:
        """Samples of the worker's /metrics by sample name."""
        text = httpx.get(f"{self.stack.worker_url}/metrics", timeout=10).text
        out: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append(sample)
        return out


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def ran(
    redis_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ran]:
    ports = Ports(
        producer=free_port(),
        worker=free_port(),
        broker=free_port(),
        llm=free_port(),
        storage=free_port(),
    )
    overrides = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "REDIS_PREFIX": f"obs-{uuid.uuid4().hex[:6]}:",
        "OPENAI_API_KEY": "",
        "QSTASH_URL": "",
        "QSTASH_MODE": "broker",
        "USER_MAX_ACTIVE_PAID": "1",
        "OFFLINE_LLM_TOKENS_PER_SECOND": "800",
        "WEB_CONCURRENCY": "2",
        "LOG_FORMAT": "json",
        "METRICS_REDIS_REFRESH_SECONDS": "0",
        # The session's stacks share one database: a reconciler would take the others' running
        # jobs for dead (it sees no lease under its own REDIS_PREFIX). Chaos runs it.
        "RECONCILE_CRON": "",
    }
    logs = Path(tmp_path_factory.mktemp("obs-logs"))
    with Stack(ports=ports, overrides=overrides, log_dir=logs, quiet=True) as stack:
        done = Ran(stack)
        bodies: dict[str, dict[str, Any]] = {}
        for kind, user in done.users.items():
            response = user.submit(kind, resume=RESUME + " [[llm:slow=4]]")
            assert response.status_code == 202, response.text
            bodies[kind] = response.json()
            done.job_ids[kind] = bodies[kind]["job"]["id"]
        # The first user's job is still running: a second one is over USER_MAX_ACTIVE_PAID.
        done.refused = done.users["job_match"].submit("job_match")
        finals: dict[str, str] = {}

        def run(kind: str) -> None:
            finals[kind] = follow(stack.producer_url, bodies[kind]["events_url"])[-1].data["status"]

        threads = [threading.Thread(target=run, args=(kind,)) for kind in KINDS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert finals == {kind: "succeeded" for kind in KINDS}
        # The attempt records its metrics just after it closes the job's stream.
        wait_for(
            lambda: total(done.metrics(), "cs_jobs_finished_total") >= len(KINDS),
            timeout=10,
            what="the finished jobs in /metrics",
        )
        yield done


def test_a_refused_submit_is_the_one_admission_refusal_in_metrics(ran: Ran) -> None:
    assert ran.refused is not None and ran.refused.status_code == 429
    assert ran.refused.json()["error"]["code"] == "user_concurrency"
    samples = ran.metrics()
    name = "cs_admission_rejections_total"
    assert total(samples, name, tier="paid", reason="user_concurrency") == 1
    assert total(samples, name) == 1


def test_jobs_attempts_and_model_metrics_are_summed_over_the_gunicorn_processes(
    ran: Ran,
) -> None:
    samples = ran.metrics()
    for kind in KINDS:
        labels = {"kind": kind, "tier": "paid"}
        assert total(samples, "cs_jobs_finished_total", outcome="succeeded", **labels) == 1
        assert total(samples, "cs_jobs_finished_total", **labels) == 1
        assert total(samples, "cs_job_attempts_total", **labels) == 1
        assert total(samples, "cs_job_attempt_seconds_count", **labels) == 1
        assert total(samples, "cs_llm_first_token_seconds_count", **labels) == 1
        for direction in ("in", "out"):
            assert total(samples, "cs_llm_tokens_total", direction=direction, **labels) > 0
    assert {s.labels["model"] for s in samples["cs_llm_tokens_total"]} == {"openai:offline"}
    assert total(samples, "cs_jobs_running") == 0
    assert total(samples, "cs_redis_errors_total") == 0
    assert total(samples, "cs_db_errors_total") == 0


def dashboard_metric_names() -> set[str]:
    """Every cs_* name in the dashboard's PromQL: panel targets and template variables."""
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        queries.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return {name for q in queries for name in re.findall(r"\bcs_[a-z0-9_]+\b", q)}


def test_every_metric_the_dashboard_reads_is_served_by_a_worker_that_ran_jobs(ran: Ran) -> None:
    names = dashboard_metric_names()
    served = set(ran.metrics())
    assert len(names) >= 10
    assert names - served == set()
    # ... and the dashboard shows every metric the worker serves.
    families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in names}
    served_families = {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in served}
    assert {n for n in served_families if n.startswith("cs_")} <= families


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}


def test_the_workers_json_lines_about_a_job_carry_its_fields_and_only_the_users_hash(
    ran: Ran,
) -> None:
    log_dir = ran.stack.log_dir
    assert log_dir is not None
    worker = (log_dir / "worker.log").read_text(errors="replace")
    records = [json.loads(line) for line in worker.splitlines() if line.startswith("{")]
    for kind, job_id in ran.job_ids.items():
        about = [r for r in records if r.get("job_id") == job_id]
        assert {r["msg"] for r in about} >= {"attempt started", "attempt ended"}
        for record in about:
            assert record["attempt"] == 1 and record["kind"] == kind, record
            assert record["user_id"] == user_hash(ran.users[kind].id), record
    everything = "\n".join(p.read_text(errors="replace") for p in log_dir.glob("*.log"))
    for user in ran.users.values():
        assert user.id not in everything


# OpenTelemetry ------------------------------------------------------------------------------------


@pytest.fixture
def no_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import opentelemetry...` fail, as on a worker without the `otel` extra."""
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)


@pytest.fixture(autouse=True)
def tracing_off() -> Iterator[None]:
    yield
    tracing.shutdown()


def test_tracing_is_off_by_default_and_a_job_runs_without_opentelemetry(
    no_opentelemetry: None, make_worker: Callable[..., WorkerEnv]
) -> None:
    env = make_worker()
    assert not tracing.enabled(env.settings)
    assert deliver(env, env.create_job()).status_code == 200


def test_tracing_enabled_without_the_extra_stops_the_worker_at_start_with_a_clear_message(
    no_opentelemetry: None, base_settings: dict[str, Any]
) -> None:
    import logging

    from worker.app import create_app

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(ConfigError, match=r"careershaper-jobs\[otel\]"):
            create_app({**base_settings, "otel_enabled": True})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_with_tracing_on_each_delivery_is_one_span_with_the_jobs_attributes(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    env = make_worker()
    exporter = InMemorySpanExporter()
    assert tracing.setup(load("any", otel_enabled=True), exporter=exporter)
    job = env.create_job("[[llm:fail_once=503]]", kind="interview_prep")

    assert deliver(env, job).status_code == 503
    assert deliver(env, job, retried=1).status_code == 200

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["job.attempt", "job.attempt"]
    for attempt, (span, status) in enumerate(zip(spans, (503, 200), strict=True), 1):
        assert dict(span.attributes or {}) == {
            "job.id": job.job_id,
            "job.tier": "paid",
            "job.retried": attempt - 1,
            "job.attempt": attempt,
            "job.kind": "interview_prep",
            "job.http_status": status,
        }


def test_spans_are_exported_over_otlp_http_to_the_configured_endpoint(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[ExportTraceServiceRequest] = []
    collector = Flask("otlp-receiver")

    @collector.post("/v1/traces")
    def traces() -> tuple[bytes, int]:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(request.get_data())
        received.append(message)
        return b"", 200

    with serve_wsgi(collector) as url:
        env = make_worker(otel_exporter_otlp_endpoint=url)
        job = env.create_job()
        assert deliver(env, job).status_code == 200
        tracing.shutdown()  # flushes the batch

    spans = [
        span
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [s.name for s in spans] == ["job.attempt"]
    attributes = {a.key: a.value for a in spans[0].attributes}
    assert attributes["job.id"].string_value == job.job_id
    assert attributes["job.kind"].string_value == "job_match"
    service = {
        a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes
    }
    assert service["service.name"] == "careershaper-worker"
