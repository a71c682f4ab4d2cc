"""What one delivery came to, in domain terms: done, retry after, give up, or busy.

The executor decides and returns a `Verdict`; it knows nothing of HTTP. The worker turns a verdict
into the broker's answer in one place (`lib.queue.wire.answer`), and the metrics read the verdict
(`lib.metrics.Metrics.attempt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Done:
    """The delivery is settled: the broker must not send it again."""

    job_id: str
    status: str | None = None
    note: str | None = None
    usage: dict[str, Any] | None = None
    changed: bool | None = None


@dataclass(frozen=True)
class RetryAfter:
    """Send the delivery again: after `seconds`, or by the broker's own backoff when None.

    `throttled` says a rate limit (ours or the model provider's) caused it, not a failure."""

    code: str
    message: str
    seconds: float | None = None
    throttled: bool = False


@dataclass(frozen=True)
class GiveUp:
    """Never send this delivery again (the job failed for good, or the delivery is malformed)."""

    code: str
    message: str
    job_id: str | None = None


@dataclass(frozen=True)
class Busy:
    """Another attempt holds the job: come back in `seconds`, when its lease may have ended."""

    code: str
    message: str
    seconds: float


Verdict = Done | RetryAfter | GiveUp | Busy
