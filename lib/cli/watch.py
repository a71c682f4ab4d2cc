"""`cs watch`: follow all of your active jobs in one stream (`GET /api/events`).

One connection carries every job that is queued or running, and every job submitted while it is
open. It reconnects with the user stream's `Last-Event-ID`, which resumes all the jobs at once:
nothing is lost and nothing is repeated. Each job keeps its own attempt, so a retry starting
over is told per job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

import httpx
from httpx_sse import SSEError, connect_sse

from lib.cli.api import raise_for_error
from lib.cli.jobs import api_from
from lib.cli.output import EXIT_INTERRUPTED, EXIT_OK, note, queue_line
from lib.cli.stream import MAX_FAILURES, JobProgress
from lib.errors import AppError, UnavailableError


class UserStream:
    """What a client knows of each of the user's jobs, from the user stream."""

    def __init__(self, out: TextIO, *, jsonl: bool, last_event_id: str | None = None) -> None:
        self.out = out
        self.jsonl = jsonl
        self.last_event_id = last_event_id
        self.jobs: dict[str, JobProgress] = {}

    def take(self, event: str, data: dict[str, Any], event_id: str | None) -> None:
        """Apply one frame to its job and print it."""
        job_id = str(data.get("job_id", ""))
        job = self.jobs.setdefault(job_id, JobProgress(job_id))
        restarted = job.apply(event, data, event_id)
        if event_id:
            self.last_event_id = event_id
        if self.jsonl:
            line = json.dumps({"id": event_id, "event": event, "data": data}, ensure_ascii=False)
        else:
            line = f"{job_id} {event} {_summary(event, data, restarted)}"
        print(line, file=self.out, flush=True)

    def done(self) -> bool:
        """True once at least one job was seen and every active job has ended.

        The frame's id is the user stream's cursor, which names every job the server still
        follows (`lib.userstream.Cursor`); a job leaves it with its terminal event. One read
        returns each job's frames in turn, so a job not seen yet may still be active while
        every job seen has ended: the cursor, not the jobs seen, says when all are done."""
        if not self.jobs or not all(job.finished for job in self.jobs.values()):
            return False
        return self.last_event_id is None or "~" not in self.last_event_id


def _summary(event: str, data: dict[str, Any], restarted: bool) -> str:
    if event == "status":
        return f"{data.get('status')} (attempt {data.get('attempt')})" + (
            ", starting over" if restarted else ""
        )
    if event == "progress":
        return f"{data.get('stage')} {data.get('pct')}%"
    if event == "queue":
        return queue_line(data)
    if event == "delta":
        return f"{len(str(data.get('text', '')))} characters"
    if event == "error":
        return f"{data.get('code')}: {data.get('message')}"
    return ""


def _read(client: httpx.Client, stream: UserStream, until_done: bool) -> int:
    """One connection; returns the number of events received."""
    headers = {"Last-Event-ID": stream.last_event_id} if stream.last_event_id else {}
    received = 0
    with connect_sse(client, "GET", "/api/events", headers=headers) as source:
        if source.response.status_code != 200:
            source.response.read()
            raise_for_error(source.response)
        for sse in source.iter_sse():
            if not sse.data:
                continue
            received += 1
            stream.take(sse.event, json.loads(sse.data), sse.id or None)
            if until_done and stream.done():
                break
    return received


def follow_all(
    client: httpx.Client,
    stream: UserStream,
    *,
    until_done: bool,
    max_failures: int = MAX_FAILURES,
) -> None:
    """Follow the user stream, reconnecting after `stream.last_event_id`, until every job seen
    has ended (`until_done`) or forever. Raises AppError for a refusal, UnavailableError after
    `max_failures` failed connections in a row."""
    failures = 0
    while not (until_done and stream.done()):
        problem: Exception | None = None
        received = 0
        try:
            received = _read(client, stream, until_done)
        except (httpx.TransportError, SSEError) as exc:
            problem = exc
        except AppError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            problem = exc
        if problem is None:
            failures = 0
            continue  # the server ended the response early (its time limit): resume at once
        failures = 1 if received else failures + 1
        if failures > max_failures:
            raise UnavailableError(f"lost the event stream: {problem}") from problem
        time.sleep(failures)


def run(args: argparse.Namespace) -> int:
    """`cs watch`: exit 0 when every job seen has ended (--until-done), 130 on Ctrl-C."""
    stream = UserStream(sys.stdout, jsonl=args.jsonl, last_event_id=args.last_event_id)
    with api_from(args) as api:
        try:
            follow_all(api.client, stream, until_done=args.until_done)
        except KeyboardInterrupt:
            if stream.last_event_id:
                note(f"interrupted; resume with: cs watch --last-event-id {stream.last_event_id}")
            return EXIT_INTERRUPTED
    return EXIT_OK
