"""The load test's simulated user (scripts/bench/loadtest.py): a `Client` submits over one
keep-alive connection, one request at a time, each a random kind and tier (sometimes a repeat
under the same Idempotency-Key), and lists its jobs and `/api/me`; a `Submit` is one answer as
the client saw it.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET

SAMPLES = Path(__file__).resolve().parents[1] / "stack" / "samples"


KINDS = ("job_match", "resume_customize", "interview_prep")


@dataclass
class Submit:
    """One submit as the client saw it."""

    user: str
    status: int
    seconds: float
    code: str = ""
    job: dict[str, Any] | None = None
    retry_after: str | None = None
    replay_of: str | None = None  # the job id the same Idempotency-Key returned before


@dataclass(eq=False)
class Client:
    """One user, submitting repeatedly over one keep-alive connection."""

    base_url: str
    user: str
    rng: random.Random
    http: httpx.Client = field(init=False)
    last: tuple[dict[str, Any], str, str] | None = None  # (body, key, job id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        token = mint_access_token(self.user, DEV_JWT_SECRET, ttl=3600)
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(30.0),
            headers={"Authorization": f"Bearer {token}"},
            # Drop idle connections before gunicorn does (its keep-alive is 2 s): reusing one
            # the server is closing at that moment gets a connection reset, not an answer.
            limits=httpx.Limits(keepalive_expiry=1.0),
        )

    def body(self) -> dict[str, Any]:
        kind = self.rng.choice(KINDS)
        tier = self.rng.choices(["auto", "paid", "free"], weights=[8, 1, 1])[0]
        return {
            "kind": kind,
            "tier": tier,
            "input": {
                "resume_text": RESUME + f"\n(submit {uuid.uuid4().hex[:8]})",
                "job_description": JOB_DESCRIPTION,
            },
        }

    def submit(self, replay_share: float) -> Submit:
        with self.lock:  # one request at a time per user, like one browser tab
            replay_of = None
            if self.last is not None and self.rng.random() < replay_share:
                body, key, replay_of = self.last
            else:
                body, key = self.body(), uuid.uuid4().hex
            started = time.perf_counter()
            try:
                response = self.http.post("/api/jobs", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                seconds = time.perf_counter() - started
                return Submit(self.user, 0, seconds, code=f"transport error: {exc!r}")
            seconds = time.perf_counter() - started
            payload = _json(response)
            submit = Submit(self.user, response.status_code, seconds, replay_of=replay_of)
            submit.retry_after = response.headers.get("Retry-After")
            if response.status_code in (200, 202):
                submit.job = payload["job"]
                self.last = (body, key, submit.job["id"])
            else:
                submit.code = str((payload.get("error") or {}).get("code", ""))
            return submit

    def jobs(self) -> dict[str, dict[str, Any]]:
        response = self.http.get("/api/jobs", params={"limit": 100})
        response.raise_for_status()
        page = response.json()
        if page["next_before"] is not None:
            raise AssertionError(f"user {self.user} has more than 100 jobs")
        return {job["id"]: job for job in page["jobs"]}

    def me(self) -> dict[str, Any]:
        response = self.http.get("/api/me")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.http.close()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


RESUME = (SAMPLES / "resume.txt").read_text()


JOB_DESCRIPTION = (SAMPLES / "job_description.txt").read_text()
