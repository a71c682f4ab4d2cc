"""Driving the running stack over HTTP only, as the front end does."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET

RESUME = (
    "Jordan Lee, backend engineer. Python, Flask, PostgreSQL, Redis, Docker, AWS. "
    "Built a settlement service handling 2M transactions a day."
)
JD = "Senior Python engineer for an AI platform: queues, workers, SSE, Postgres, Redis."


@dataclass
class Event:
    id: str
    type: str
    data: dict[str, Any]


@dataclass
class User:
    base: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def token(self) -> str:
        return mint_access_token(self.id, DEV_JWT_SECRET)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            timeout=httpx.Timeout(30.0),
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def submit(
        self,
        kind: str = "job_match",
        *,
        resume: str = RESUME,
        tier: str | None = None,
        key: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "kind": kind,
            "input": {"resume_text": resume, "job_description": JD, **extra},
        }
        if tier:
            body["tier"] = tier
        headers = {"Idempotency-Key": key} if key else {}
        with self.client() as c:
            return c.post("/api/jobs", json=body, headers=headers)

    def get(self, path: str) -> httpx.Response:
        with self.client() as c:
            return c.get(path)

    def post(self, path: str) -> httpx.Response:
        with self.client() as c:
            return c.post(path)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()["job"]  # type: ignore[no-any-return]

    def me(self) -> dict[str, Any]:
        return self.get("/api/me").json()  # type: ignore[no-any-return]


def events(
    base: str,
    events_url: str,
    *,
    last_event_id: str | None = None,
    stop_after: int | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> list[Event]:
    """Read a job's SSE stream until it ends (or `stop_after` events); returns the events."""
    out: list[Event] = []
    hdrs = dict(headers or {})
    if last_event_id:
        hdrs["Last-Event-ID"] = last_event_id
    with (
        httpx.Client(base_url=base, timeout=httpx.Timeout(timeout)) as client,
        connect_sse(client, "GET", events_url, headers=hdrs) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if not sse.data:
                continue
            out.append(Event(sse.id, sse.event, json.loads(sse.data)))
            if stop_after is not None and len(out) >= stop_after:
                break
    return out


def follow(base: str, events_url: str, timeout: float = 90.0) -> list[Event]:
    """Read a stream to its terminal event, reconnecting with Last-Event-ID like EventSource."""
    seen: list[Event] = []
    while not seen or not is_terminal(seen[-1]):
        batch = events(
            base, events_url, last_event_id=seen[-1].id if seen else None, timeout=timeout
        )
        seen.extend(batch)
    return seen


def is_terminal(event: Event) -> bool:
    return event.type == "status" and event.data["status"] in ("succeeded", "failed", "cancelled")


def terminal_count(stream: list[Event]) -> int:
    return sum(1 for e in stream if is_terminal(e))


def text_of_last_attempt(stream: list[Event]) -> str:
    """The delta text a client shows: earlier attempts' text is discarded on a new attempt."""
    text, attempt = "", 0
    for event in stream:
        if event.type == "status" and event.data["status"] == "running":
            if event.data["attempt"] > attempt:
                attempt, text = event.data["attempt"], ""
        elif event.type == "delta" and event.data["attempt"] == attempt:
            text += event.data["text"]
    return text


def submitted(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_logs_clean(stack: Any, job_id: str) -> None:
    """Every log file of `stack` names `job_id` (the logs are there, and about jobs) and
    carries no token, signature, resume or job-description text."""
    assert stack.log_dir is not None
    text = "\n".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
    assert job_id in text
    for secret in ("eyJ", "sig_", "Bearer ", RESUME[:40], "settlement service", JD[:30]):
        assert secret not in text, f"{secret!r} found in the logs"
