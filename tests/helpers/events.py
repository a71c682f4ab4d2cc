"""lib/events.py's test helpers: a job's stream as (type, data), and a writer on a given clock."""

from __future__ import annotations

import json

from helpers.net import Clock
from lib.events import JobEvents
from lib.state import State


def events_of(state: State, job_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(fields["t"], json.loads(fields["d"])) for _, fields in state.read(job_id)]


def writer(state: State, job_id: str, clock: Clock, attempt: int = 1) -> JobEvents:
    return JobEvents(state, job_id, attempt, flush_ms=250, flush_chars=10, clock=clock)
