"""Prometheus metrics of the worker, correct under gunicorn's several processes.

With `PROMETHEUS_MULTIPROC_DIR` set (worker/gunicorn.conf.py sets it), every process writes its
samples there and `/metrics` aggregates them, as prometheus_client's multiprocess mode documents.
Every name is listed, with its labels, in docs/observability.md; docs/grafana/ reads them.

Admission happens in the producer (Vercel functions, no /metrics): the ADMIT script counts its
refusals in a Redis hash, and `/metrics` reads that hash at scrape time (`AdmissionCollector`).
Redis and database errors are counted where every call passes: `count_errors` wraps the two
backends of the worker's `State` and `Store`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from lib.config import settings
from lib.models import TERMINAL
from lib.state.backend import Entry
from lib.state.scripts import Script
from lib.verdict import Done, GiveUp, Verdict

ATTEMPTS = Counter(
    "cs_job_attempts_total",
    "Job attempts by kind, tier and outcome (succeeded, failed, cancelled or retry)",
    ["kind", "tier", "outcome"],
)
FINISHED = Counter(
    "cs_jobs_finished_total",
    "Jobs this worker made terminal, by kind, tier and final outcome",
    ["kind", "tier", "outcome"],
)
DURATION = Histogram(
    "cs_job_attempt_seconds",
    "Attempt duration",
    ["kind", "tier"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600),
)
FIRST_TOKEN = Histogram(
    "cs_llm_first_token_seconds",
    "Time from the start of an attempt to the model's first output token",
    ["kind", "tier"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
TOKENS = Counter(
    "cs_llm_tokens_total",
    "LLM tokens by kind, tier, model and direction (in: prompt, out: completion)",
    ["kind", "tier", "model", "direction"],
)
LIVE = Gauge("cs_jobs_running", "Attempts running in this worker", multiprocess_mode="livesum")
WAITS = Counter(
    "cs_model_waits_total",
    "Detached mode: deliveries that found their model full and waited, by tier and model",
    ["tier", "model"],
)
REPUBLISHED = Counter(
    "cs_republished_total",
    "Detached mode: deliveries the worker published (retry, or wake of a model waiter)",
    ["reason"],
)
REDIS_ERRORS = Counter("cs_redis_errors_total", "Redis calls of the worker that raised")
DB_ERRORS = Counter("cs_db_errors_total", "Database calls of the worker that raised")

ADMISSION_REJECTIONS = "cs_admission_rejections"
ADMISSION_REASONS = ("backpressure", "user_concurrency")
TIERS = ("free", "paid")


class Metrics:
    """What the executor and the handlers' context report; thread-safe."""

    def running(self, delta: int) -> None:
        LIVE.inc(delta)

    def attempt(self, job: Any, verdict: Verdict, seconds: float) -> None:
        """One attempt ended with `verdict`: done (with the job's status), given up (failed),
        or to be retried. One that made the job terminal also counts in
        `cs_jobs_finished_total`."""
        if isinstance(verdict, Done):
            outcome = verdict.status or "succeeded"
        else:
            outcome = "failed" if isinstance(verdict, GiveUp) else "retry"
        ATTEMPTS.labels(job.kind, job.tier, outcome).inc()
        DURATION.labels(job.kind, job.tier).observe(seconds)
        if outcome in TERMINAL:
            self.finished(job, outcome)

    def waited(self, tier: str, model: str) -> None:
        """A delivery found its model full and waits (detached mode)."""
        WAITS.labels(tier, model).inc()

    def republished(self, reason: str) -> None:
        """The worker published a delivery itself: `retry` or `wake` (detached mode)."""
        REPUBLISHED.labels(reason).inc()

    def finished(self, job: Any, outcome: str) -> None:
        """The job reached `outcome` (succeeded, failed or cancelled) through this worker."""
        FINISHED.labels(job.kind, job.tier, outcome).inc()

    def llm_call(
        self,
        kind: str,
        tier: str,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        first_token_s: float | None,
    ) -> None:
        """One LLM call ended (also when it failed or was stopped early)."""
        if tokens_in:
            TOKENS.labels(kind, tier, model, "in").inc(tokens_in)
        if tokens_out:
            TOKENS.labels(kind, tier, model, "out").inc(tokens_out)
        if first_token_s is not None:
            FIRST_TOKEN.labels(kind, tier).observe(max(0.0, first_token_s))


# Redis and database errors ---------------------------------------------------------------------
class _CountingRedis:
    """A RedisBackend that counts every call that raises in `cs_redis_errors_total`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.inner, name)(*args, **kwargs)
        except Exception:
            REDIS_ERRORS.inc()
            raise

    def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        return self._call("run", script, keys, args)

    def run_many(self, calls: list[tuple[Script, list[str], list[str | int]]]) -> list[Any]:
        result: list[Any] = self._call("run_many", calls)
        return result

    def read(self, stream: str, after: str, count: int) -> list[Entry]:
        result: list[Entry] = self._call("read", stream, after, count)
        return result

    def wait(
        self, stream: str, channel: str, after: str, timeout: float, count: int
    ) -> list[Entry]:
        result: list[Entry] = self._call("wait", stream, channel, after, timeout, count)
        return result

    def ping(self) -> None:
        self._call("ping")

    def command(self, *args: str | int) -> Any:
        return self._call("command", *args)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else the adapter offers, uncounted
        return getattr(self.inner, name)


class _CountingStore:
    """A StoreBackend that counts every call that raises in `cs_db_errors_total`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        try:
            return self.inner.call(fn, params)
        except Exception:
            DB_ERRORS.inc()
            raise

    def ping(self) -> None:
        try:
            self.inner.ping()
        except Exception:
            DB_ERRORS.inc()
            raise

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def count_errors(store: Any, state: Any) -> None:
    """Count every failing call of `store` and `state` from now on (wraps their backends once).

    Whether the caller then retries, answers 503 or only logs, the failure is counted once,
    at the one place all calls pass."""
    if not isinstance(store.backend, _CountingStore):
        store.backend = _CountingStore(store.backend)
    if not isinstance(state.backend, _CountingRedis):
        state.backend = _CountingRedis(state.backend)


# Admission refusals ----------------------------------------------------------------------------
class AdmissionCollector(Collector):
    """`cs_admission_rejections_total{tier,reason}` from the stats hash the producer's ADMIT
    script keeps in Redis, read at most every `refresh` seconds (one HGETALL).

    The count is global, so every worker reports the same value: aggregate it across instances
    with `max`, not `sum`. When Redis cannot be read, the last values read are reported."""

    def __init__(self, state: Any, refresh: float) -> None:
        self.state = state
        self.refresh = refresh
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._read_at: float | None = None

    def _counts_now(self) -> dict[tuple[str, str], int]:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.refresh:
                try:
                    self._counts = self.state.admission_rejections()
                except Exception:  # noqa: S110 - counted as a Redis error; keep the last values
                    pass
                else:
                    self._read_at = now
            return dict(self._counts)

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._counts_now()
        family = CounterMetricFamily(
            ADMISSION_REJECTIONS,
            "Submits the producer's admission refused, by tier and reason (global, from Redis)",
            labels=["tier", "reason"],
        )
        keys = {(t, r) for t in TIERS for r in ADMISSION_REASONS} | set(counts)
        for tier, reason in sorted(keys):
            family.add_metric([tier, reason], counts.get((tier, reason), 0))
        yield family


class _ThisProcess(Collector):
    """The default registry's metrics (one process, without PROMETHEUS_MULTIPROC_DIR)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def render(*extra: Collector) -> tuple[bytes, str]:
    """The exposition text of every process's metrics and of `extra` collectors (such as an
    `AdmissionCollector`), and its content type."""
    registry = CollectorRegistry()
    if settings("any").prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
