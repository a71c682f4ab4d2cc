"""Enqueue jobs: through QStash with the official SDK, or straight to the worker in dev.

A message carries ids, never the job's input: `{job_id, user_id, tier, retries}`.
The job id is the deduplication id, so publishing the same job twice within QStash's
window delivers it once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Protocol

from lib.config import Settings
from lib.errors import UnavailableError
from lib.queue.plans import failure_callback_retries

log = logging.getLogger(__name__)


def message_body(job_id: str, user_id: str, tier: str, retries: int) -> bytes:
    """The signed body of a delivery. `retries` lets the worker know its last attempt."""
    return json.dumps(
        {"job_id": job_id, "user_id": user_id, "tier": tier, "retries": retries},
        separators=(",", ":"),
    ).encode()


def flow_control_key(tier: str, model_spec: str) -> str:
    """One QStash flow-control key per tier and model (letters, digits, `-`, `_`, `.`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"cs-{tier}-{model_spec}")


class Publisher(Protocol):
    def publish(
        self, job_id: str, *, user_id: str, tier: str, model: str, dedup_id: str | None = None
    ) -> str:
        """Hand the job to the broker; return the message id. Raises UnavailableError.
        `dedup_id` (default: the job id) is the broker's deduplication id: a re-publish by
        the reconciler passes its own, or QStash's 10-minute window would drop it."""


class QStashPublisher:
    """Publishes to `WORKER_URL/v1/execute` with retries, dedup, flow control and callback."""

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
        self._client.http._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=2.0))

    def publish(
        self, job_id: str, *, user_id: str, tier: str, model: str, dedup_id: str | None = None
    ) -> str:
        import httpx
        from qstash.errors import QStashError

        s = self.settings
        parallelism = s.llm_max_concurrency_paid if tier == "paid" else s.llm_max_concurrency_free
        try:
            response: Any = self._client.message.publish(
                url=s.execute_url,
                body=message_body(job_id, user_id, tier, s.job_retries).decode(),
                content_type="application/json",
                retries=s.job_retries,
                retry_delay=s.job_retry_delay or None,
                deduplication_id=dedup_id or job_id,
                failure_callback=s.failed_url,
                # `Upstash-Failure-Callback-Retries` (https://upstash.com/docs/qstash/features/
                # callbacks, "Configuring Callbacks"); by default the callback gets the message's
                # own retries, none at JOB_RETRIES=0, and one deferred /v1/failed would then lose
                # the refund. The SDK's publish has no parameter for it; `prepare_headers` sends a
                # `failure_callback_headers` name that already starts with the prefix unchanged.
                failure_callback_headers={
                    "Upstash-Failure-Callback-Retries": str(
                        failure_callback_retries(s.qstash_plan, s.job_retries)
                    )
                },
                flow_control={"key": flow_control_key(tier, model), "parallelism": parallelism},
                timeout=f"{s.job_timeout_seconds}s",
            )
        except (QStashError, httpx.HTTPError) as exc:
            raise UnavailableError("the job broker is unavailable") from exc
        return str(response.message_id)


class DirectPublisher:
    """Dev only: deliver straight to the worker, signed like QStash, with no broker.

    One attempt, in a background thread; when it fails, the failure callback is called the way
    QStash would, so the job still ends failed and refunded. No retries, no flow control.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(
        self, job_id: str, *, user_id: str, tier: str, model: str, dedup_id: str | None = None
    ) -> str:
        thread = threading.Thread(
            target=self._deliver, args=(job_id, user_id, tier), name=f"direct-{job_id}", daemon=True
        )
        thread.start()
        return f"direct_{job_id}"

    def _deliver(self, job_id: str, user_id: str, tier: str) -> None:
        import base64

        import requests

        from lib.queue.signing import sign

        s = self.settings
        body = message_body(job_id, user_id, tier, 0)
        key = s.qstash_current_signing_key
        headers = {
            "Content-Type": "application/json",
            "Upstash-Retried": "0",
            "Upstash-Message-Id": f"direct_{job_id}",
        }
        status = 0
        try:
            response = requests.post(
                s.execute_url,
                data=body,
                timeout=s.job_timeout_seconds,
                headers={**headers, "Upstash-Signature": sign(key, s.execute_url, body)},
            )
            status = response.status_code
        except requests.RequestException:
            log.warning("direct delivery failed to reach the worker", extra={"job_id": job_id})
        if 200 <= status < 300:
            return
        callback = json.dumps(
            {
                "status": status,
                "retried": 0,
                "maxRetries": 0,
                "sourceMessageId": f"direct_{job_id}",
                "url": s.execute_url,
                "sourceBody": base64.b64encode(body).decode(),
            }
        ).encode()
        try:
            requests.post(
                s.failed_url,
                data=callback,
                timeout=30,
                headers={
                    "Content-Type": "application/json",
                    "Upstash-Signature": sign(key, s.failed_url, callback),
                },
            )
        except requests.RequestException:
            log.warning("direct failure callback failed", extra={"job_id": job_id})


def from_settings(settings: Settings) -> Publisher:
    if settings.qstash_mode == "direct":
        return DirectPublisher(settings)
    return QStashPublisher(settings)
