"""Prometheus metrics of the worker, correct under gunicorn's several processes.

With `PROMETHEUS_MULTIPROC_DIR` set (worker/gunicorn.conf.py sets it), every process writes its
samples there and `/metrics` aggregates them, as prometheus_client's multiprocess mode documents.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from lib.config import settings

ATTEMPTS = Counter(
    "cs_job_attempts_total",
    "Job attempts by kind, tier and HTTP outcome",
    ["kind", "tier", "outcome"],
)
DURATION = Histogram(
    "cs_job_attempt_seconds",
    "Attempt duration",
    ["kind", "tier"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600),
)
LIVE = Gauge("cs_jobs_running", "Attempts running in this worker", multiprocess_mode="livesum")


class Metrics:
    def running(self, delta: int) -> None:
        LIVE.inc(delta)

    def attempt(self, job: Any, status: int, seconds: float, final: str | None = None) -> None:
        if status == 200:
            outcome = final or "succeeded"
        else:
            outcome = "failed" if status == 489 else "retry"
        ATTEMPTS.labels(job.kind, job.tier, outcome).inc()
        DURATION.labels(job.kind, job.tier).observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text of every process's metrics, and its content type."""
    if settings("any").prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
