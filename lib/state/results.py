"""What the state operations answer: typed results instead of bare strings and tuples."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


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


class Signal(NamedTuple):
    """One message of the watch channel: a new viewer (`watch`) or a closed stream (`done`)."""

    job_id: str
    watch: str | None
    done: str | None
