"""What the state operations answer: typed results instead of bare strings and tuples."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from lib.errors import RateLimitError
from lib.models import ErrorCode


class Renewal(NamedTuple):
    """One lease's heartbeat answer."""

    held: bool
    done: str | None  # the terminal status once the stream is closed (the cancel flag)
    watch: str | None  # "tcp" or "rest" while an SSE reader watches the job, else None


class Acquire(StrEnum):
    """What ACQUIRE did with a job's lease."""

    ACQUIRED = "acquired"
    DONE = "done"
    BUSY = "busy"


class Acquisition(NamedTuple):
    """ACQUIRE's answer: the outcome and its detail (see the properties)."""

    outcome: Acquire
    detail: str | int | None

    @property
    def watch(self) -> str | None:
        """ACQUIRED: the transport of a live SSE reader ("tcp", "rest"), or None."""
        return str(self.detail) if self.outcome == Acquire.ACQUIRED and self.detail else None

    @property
    def status(self) -> str | None:
        """DONE: the job's terminal status (its stream is closed)."""
        return str(self.detail) if self.outcome == Acquire.DONE else None

    @property
    def remaining_ms(self) -> int:
        """BUSY: how long the other attempt's lease still lasts, in ms (0 otherwise)."""
        return int(self.detail or 0) if self.outcome == Acquire.BUSY else 0


# A watch-channel message "<job id> closed:<status>" says the job's stream was closed.
CLOSED_PREFIX = "closed:"
# A watch-channel message "<job id> left" says the job's last viewer left.
LEFT = "left"


class Signal(NamedTuple):
    """One message of the watch channel: a new viewer (`watch`), a closed stream (`done`), or
    neither: the last viewer left."""

    job_id: str
    watch: str | None
    done: str | None


def refusal(answer: list[Any], tier: str, limit: int) -> RateLimitError:
    """The 429 of a refused admission from ADMIT's answer (reason, live jobs, ms until the
    next slot, mean service ms or -1): `details` says why and when the next slot is expected,
    and Retry-After is that same estimate (whole seconds, at least 1)."""
    reason, live, next_ms, service_ms = str(answer[0]), *(int(v) for v in answer[1:4])
    next_slot_s = max(1, -(-next_ms // 1000))
    details: dict[str, Any] = {
        "limit": limit,
        "active": live,
        "next_slot_s": next_slot_s,
        # The tier's mean service time over its recent jobs; null before any job has ended.
        "service_s": round(service_ms / 1000, 1) if service_ms >= 0 else None,
    }
    if reason == "backpressure":
        details["reason"] = f"the {tier} queue is full: {live} jobs admitted, the limit is {limit}"
        message = f"the {tier} queue is full; try again in about {next_slot_s} s"
        code = ErrorCode.BACKPRESSURE
    else:
        details["reason"] = f"{live} of your {tier} jobs are active, the limit is {limit}"
        message = f"you already have {live} active {tier} job(s); wait for one to finish"
        code = ErrorCode.USER_CONCURRENCY
    return RateLimitError(message, code=code, retry_after=next_slot_s, details=details)


def stream_limit(limit: int, lapse_ms: int, open_streams: int) -> RateLimitError:
    """The 429 of a refused event stream (HOLD_STREAM's answer): Retry-After and
    `details.next_slot_s` are when the oldest slot lapses should its stream have gone without
    closing; `next_slot_in_s` is the same value under its earlier name, kept for clients."""
    lapse_s = max(1, -(-lapse_ms // 1000))
    return RateLimitError(
        f"you already have {limit} open event stream(s); close one first",
        code=ErrorCode.STREAM_LIMIT,
        retry_after=lapse_s,
        details={
            "reason": f"{open_streams} event streams are open, the limit is {limit}",
            "limit": limit,
            "open": open_streams,
            "next_slot_s": lapse_s,
            "next_slot_in_s": lapse_s,
        },
    )
