"""Following a job's event stream the way the browser's EventSource does, and drawing it.

`follow` reconnects with `Last-Event-ID` until the terminal status, so nothing is lost and
nothing is repeated when the server ends a response early or the connection drops. A
`status: running` with a higher `attempt` starts the text over: the output of an earlier attempt
is never shown as part of the answer.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import httpx
from httpx_sse import SSEError, connect_sse

from lib.cli.api import raise_for_error
from lib.cli.env import Cursor
from lib.cli.output import queue_line
from lib.errors import AppError, UnavailableError
from lib.models import TERMINAL

MAX_FAILURES = 5
# The server sends a heartbeat at least every 15 s; a silent connection is dead after this.
READ_TIMEOUT_SECONDS = 45.0


@dataclass
class JobProgress:
    """What a client knows of one job from its stream."""

    job_id: str
    cursor: Cursor = field(default_factory=Cursor)
    status: str = "queued"
    stage: str = "queued"
    pct: int = 0
    text: str = ""
    dropped: int = 0
    queue: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def _start_attempt(self, attempt: int) -> bool:
        self.dropped, self.text = len(self.text), ""
        self.cursor.attempt = attempt
        return attempt > 1

    def apply(self, event: str, data: dict[str, Any], event_id: str | None) -> bool:
        """Take one event into account. Returns True when a retry started over."""
        if event_id:
            self.cursor.last_event_id = event_id
        restarted = False
        if event == "status":
            self.status = str(data.get("status", self.status))
            attempt = int(data.get("attempt", 0))
            if self.status == "running" and attempt > self.cursor.attempt:
                restarted = self._start_attempt(attempt)
        elif event == "delta":
            attempt = int(data.get("attempt", self.cursor.attempt))
            if attempt > self.cursor.attempt:
                restarted = self._start_attempt(attempt)
            if attempt == self.cursor.attempt:
                self.text += str(data.get("text", ""))
        elif event == "progress":
            self.stage, self.pct = str(data.get("stage", "")), int(data.get("pct", 0))
        elif event == "queue":
            self.queue = data if int(data.get("position", 0)) > 0 else None
        elif event == "result":
            self.result = data.get("result")
        elif event == "error":
            self.error = data
        return restarted


class View(Protocol):
    def show(self, job: JobProgress, event: str, data: dict[str, Any], restarted: bool) -> None:
        """Draw one event that `job` has just taken into account."""

    def close(self) -> None:
        """Finish drawing."""


def _retryable(exc: AppError) -> bool:
    return exc.status >= 500 or exc.status == 429


def _read(
    client: httpx.Client,
    url: str,
    job: JobProgress,
    view: View,
    headers: dict[str, str],
) -> tuple[int, float]:
    """One connection: returns (events received, the server's reconnect delay in seconds)."""
    received, retry = 0, 1.0
    if job.cursor.last_event_id:
        headers = {**headers, "Last-Event-ID": job.cursor.last_event_id}
    with connect_sse(client, "GET", url, headers=headers) as source:
        if source.response.status_code != 200:
            source.response.read()
            raise_for_error(source.response)
        for sse in source.iter_sse():
            if sse.retry:
                retry = sse.retry / 1000
            if not sse.data:
                continue
            received += 1
            data = json.loads(sse.data)
            restarted = job.apply(sse.event, data, sse.id or None)
            view.show(job, sse.event, data, restarted)
            if job.finished:
                break
    return received, retry


def follow(
    client: httpx.Client,
    url: str,
    job: JobProgress,
    view: View,
    *,
    headers: dict[str, str] | None = None,
    max_failures: int = MAX_FAILURES,
) -> JobProgress:
    """Read `url` (a job's SSE stream) until the job's terminal status, reconnecting after
    `job.cursor` whenever a response ends early or fails.

    Raises AppError for a refusal (401, 404), and UnavailableError after `max_failures`
    failed connections in a row.
    """
    failures = 0
    while not job.finished:
        started = time.monotonic()
        received, retry = 0, 1.0
        problem: Exception | None = None
        try:
            received, retry = _read(client, url, job, view, headers or {})
        except (httpx.TransportError, SSEError) as exc:
            problem = exc
        except AppError as exc:
            if not _retryable(exc):
                raise
            problem = exc
        if job.finished:
            break
        if problem is None:
            # The server ended the response before the job ended (its time limit): reconnect
            # at once, as EventSource does, but never more often than its `retry` hint.
            failures = 0
            time.sleep(max(0.0, retry - (time.monotonic() - started)))
            continue
        failures = 1 if received else failures + 1
        if failures > max_failures:
            raise UnavailableError(f"lost the event stream: {problem}") from problem
        time.sleep(retry * failures)
    return job


class PlainView:
    """Line-oriented output for logs and pipes: deltas as they come, one line per change."""

    def __init__(self, out: TextIO | None = None, *, deltas: bool = True) -> None:
        self.out = out or sys.stderr
        self.deltas = deltas
        self._mid_line = False

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.write(f"[cs] {text}\n")
        self.out.flush()

    def show(self, job: JobProgress, event: str, data: dict[str, Any], restarted: bool) -> None:
        if restarted:
            dropped = f": ignore the {job.dropped} characters above" if job.dropped else ""
            self._line(f"attempt {job.cursor.attempt} started over{dropped}")
        if event == "delta" and self.deltas:
            text = str(data.get("text", ""))
            self.out.write(text)
            self.out.flush()
            self._mid_line = bool(text) and not text.endswith("\n")
        elif event == "status":
            self._line(f"status {job.status} (attempt {job.cursor.attempt})")
        elif event == "queue":
            self._line(queue_line(data))
        elif event == "progress" and not self.deltas:
            # With deltas on, the text is the progress; a line here would split it.
            self._line(f"{job.stage} {job.pct}%")
        elif event == "error":
            retry = "; it will be retried" if data.get("retryable") else ""
            self._line(f"error {data.get('code')}: {data.get('message')}{retry}")

    def close(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self._mid_line = False
        self.out.flush()


class JsonLinesView:
    """Each event as one JSON line (`{"id", "event", "data"}`), for scripts."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def show(self, job: JobProgress, event: str, data: dict[str, Any], restarted: bool) -> None:
        line = {"id": job.cursor.last_event_id, "event": event, "data": data}
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


class RichView:
    """A live terminal view: the tail of the current attempt's text above a progress bar."""

    TAIL_LINES = 12

    def __init__(self, kind: str = "job") -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
        )
        self.task = self.bar.add_task(kind, total=100, detail="queued")
        self.live = Live(self._render(None), console=self.console, refresh_per_second=8)
        self.live.start()

    def _render(self, job: JobProgress | None) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        if job is None or not job.text:
            return self.bar
        # The last lines as the panel will wrap them, so a long answer never floods the screen.
        width = max(20, self.console.width - 4)
        recent = job.text[-width * self.TAIL_LINES * 2 :]
        lines = [
            line[i : i + width]
            for line in recent.splitlines()
            for i in range(0, len(line) or 1, width)
        ]
        tail = "\n".join(lines[-self.TAIL_LINES :])
        title = f"model output, attempt {job.cursor.attempt}"
        return Group(Panel(Text(tail), title=title, title_align="left"), self.bar)

    def show(self, job: JobProgress, event: str, data: dict[str, Any], restarted: bool) -> None:
        if restarted:
            dropped = f"; {job.dropped} characters of it discarded" if job.dropped else ""
            self.console.print(f"[yellow]attempt {job.cursor.attempt} started over{dropped}[/]")
        if event == "error":
            retry = " (will retry)" if data.get("retryable") else ""
            self.console.print(f"[red]error {data.get('code')}: {data.get('message')}{retry}[/]")
        detail = (
            f"{job.status} · {job.stage} · attempt {job.cursor.attempt} · {len(job.text)} chars"
        )
        if job.queue and job.status == "queued":
            detail = f"{job.status} · {queue_line(job.queue)}"
        self.bar.update(self.task, completed=100 if job.finished else job.pct, detail=detail)
        self.live.update(self._render(job))

    def close(self) -> None:
        self.live.stop()
