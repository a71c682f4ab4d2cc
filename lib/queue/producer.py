"""Enqueue jobs: through QStash with the official SDK, or straight to the worker in dev.

A message carries ids, never the job's input: `{job_id, user_id, tier, retries}`.
The job id is the deduplication id, so publishing the same job twice within QStash's
window delivers it once.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any, Protocol

from lib.config import Settings
from lib.models import Tier
from lib.queue import plans, wire

log = logging.getLogger(__name__)


def flow_control_key(tier: str, model_spec: str) -> str:
    """One QStash flow-control key per tier and model (letters, digits, `-`, `_`, `.`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"cs-{tier}-{model_spec}")


class Publisher(Protocol):
    def publish(
        self,
        job_id: str,
        *,
        user_id: str,
        tier: str,
        model: str,
        dedup_id: str | None = None,
        box: str | None = None,
        delay: float | None = None,
        gen: int | None = None,
    ) -> str:
        """Hand the job to the broker; return the message id. Raises UnavailableError.
        `dedup_id` (default: the job id) is the broker's deduplication id: a re-publish by
        the reconciler or the detached worker passes its own, or QStash's 10-minute window
        would drop it. `box` is the worker box's base URL (lib/boxes.py; default: WORKER_URL,
        else the first of WORKER_URLS): its `/v1/execute` is the destination, and the `sub`
        its signature carries, which that box verifies. `delay` (s) holds the message back
        (Upstash-Delay); `gen` is the job's delivery generation (detached mode,
        lib/queue/wire.py)."""


class QStashPublisher:
    """Publishes to `<box>/v1/execute` with retries, dedup, flow control and the failure
    callback `<box>/v1/failed` (the box is the one that ran out of retries)."""

    def __init__(self, settings: Settings, *, timeout: float = 5.0) -> None:
        import httpx  # here, not at the top: api/ functions that never publish skip it
        from qstash import QStash

        self.settings = settings
        # Publishing is idempotent (dedup id), so one quick retry on a transport error is safe.
        self._client = QStash(
            settings.qstash_token,
            base_url=settings.qstash_url,
            retry={"retries": 1, "backoff": lambda attempt: 200.0},
        )
        # The SDK's default timeout is 600 s; a submit must fail fast when the broker is down.
        # Set on the SDK's own client: a new one would load the CA bundle again (a cold start
        # pays each load; docs/performance.md).
        self._client.http._client.timeout = httpx.Timeout(timeout, connect=2.0)

    def publish(
        self,
        job_id: str,
        *,
        user_id: str,
        tier: str,
        model: str,
        dedup_id: str | None = None,
        box: str | None = None,
        delay: float | None = None,
        gen: int | None = None,
    ) -> str:
        s = self.settings
        base = (box or s.box_url).rstrip("/")
        # Flow control keeps the deliveries in flight per tier and model within the model's
        # limit. Inline, a delivery holds its slot for the whole job; detached, a delivery
        # lasts only until the job is started, and the worker bounds models itself
        # (lib/state/waits.py), so it only smooths bursts.
        parallelism = (
            s.llm_max_concurrency_paid if tier == Tier.PAID else s.llm_max_concurrency_free
        )
        account = plans.plan(s.qstash_plan).parallelism
        if account is not None:
            parallelism = min(parallelism, account)
        options: dict[str, Any] = {
            "flow_control": {"key": flow_control_key(tier, model), "parallelism": parallelism}
        }
        if delay is not None and delay > 0:
            options["delay"] = max(1, math.ceil(delay))
        return wire.publish(
            self._client,
            s,
            url=base + "/v1/execute",
            body=wire.message_body(job_id, user_id, tier, s.job_retries, gen).decode(),
            failure_callback=base + "/v1/failed",
            retries=s.job_retries,
            deduplication_id=dedup_id or job_id,
            content_type="application/json",
            retry_delay=s.job_retry_delay or None,
            **options,
        )


class DirectPublisher:
    """Dev only: deliver straight to the worker, signed like QStash, with no broker.

    One attempt, in a background thread; when it fails, the failure callback is called the way
    QStash would, so the job still ends failed and refunded. No retries, no flow control.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(
        self,
        job_id: str,
        *,
        user_id: str,
        tier: str,
        model: str,
        dedup_id: str | None = None,
        box: str | None = None,
        delay: float | None = None,
        gen: int | None = None,
    ) -> str:
        base = (box or self.settings.box_url).rstrip("/")
        thread = threading.Timer(
            max(0.0, delay or 0.0), self._deliver, args=(job_id, user_id, tier, base, gen)
        )
        thread.name, thread.daemon = f"direct-{job_id}", True
        thread.start()
        return f"direct_{job_id}"

    def _deliver(
        self, job_id: str, user_id: str, tier: str, base: str, gen: int | None = None
    ) -> None:
        import requests

        from lib.queue.signing import sign

        s = self.settings
        execute_url, failed_url = base + "/v1/execute", base + "/v1/failed"
        body = wire.message_body(job_id, user_id, tier, 0, gen)
        key = s.qstash_current_signing_key
        headers = {
            "Content-Type": "application/json",
            "Upstash-Retried": "0",
            "Upstash-Message-Id": f"direct_{job_id}",
        }
        status = 0
        try:
            response = requests.post(
                execute_url,
                data=body,
                timeout=s.job_timeout_seconds,
                headers={**headers, "Upstash-Signature": sign(key, execute_url, body)},
            )
            status = response.status_code
        except requests.RequestException:
            log.warning("direct delivery failed to reach the worker", extra={"job_id": job_id})
        if 200 <= status < 300:
            return
        callback = wire.failure_callback_body(
            status, body, url=execute_url, message_id=f"direct_{job_id}"
        )
        try:
            requests.post(
                failed_url,
                data=callback,
                timeout=30,
                headers={
                    "Content-Type": "application/json",
                    "Upstash-Signature": sign(key, failed_url, callback),
                },
            )
        except requests.RequestException:
            log.warning("direct failure callback failed", extra={"job_id": job_id})


def from_settings(settings: Settings) -> Publisher:
    if settings.qstash_mode == "direct":
        return DirectPublisher(settings)
    return QStashPublisher(settings)
