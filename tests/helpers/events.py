"""lib/events.py's test helpers: a settable clock, a job's stream as (type, data), a writer."""

from __future__ import annotations

import json

from lib.events import JobEvents
from lib.state import State


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def events_of(state: State, job_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(fields["t"], json.loads(fields["d"])) for _, fields in state.read(job_id)]


def writer(state: State, job_id: str, clock: Clock, attempt: int = 1) -> JobEvents:
    return JobEvents(state, job_id, attempt, flush_ms=250, flush_chars=10, clock=clock)
