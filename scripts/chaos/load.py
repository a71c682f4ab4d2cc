"""The load of one chaos scenario: many users submit jobs over HTTP, a few cancel, a sample of
streams is followed live over SSE, and a monitor watches the jobs in the database.

Everything goes through the producer's public API, as the front end does; only the monitor
reads Postgres directly (to know when the run has drained and how many jobs ran at once).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from httpx_sse import connect_sse

from lib.auth import mint_access_token
from lib.config import DEV_JWT_SECRET
from scripts.stack.demo import SCREENSHOT

KINDS = ("job_match", "resume_customize", "interview_prep")
# The `pipeline` scenario's mix: one pipeline (four steps, four messages) for every two jobs.
PIPELINE_KINDS = ("match_from_image", "job_match", "interview_prep")
TERMINAL = ("succeeded", "failed", "cancelled")
RESUME = (
    "Jordan Lee, backend engineer #{n}. Python, Flask, PostgreSQL, Redis, Docker, AWS. "
    "Built a settlement service handling 2M transactions a day. {marker}"
)
JD = "Senior Python engineer for an AI platform: queues, workers, SSE, Postgres, Redis."


@dataclass
class Planned:
    """One job the load will submit, and what its outcome should be."""

    index: int
    user_id: str
    kind: str
    tier: str
    marker: str = ""
    expect: str = "succeeded"
    cancel_after: float | None = None
    follow: bool = False

    @property
    def token(self) -> str:
        return mint_access_token(self.user_id, DEV_JWT_SECRET)

    def body(self, image: str = "") -> dict[str, Any]:
        resume = RESUME.format(n=self.index, marker=self.marker)
        if self.kind == "match_from_image":  # a pipeline, on an uploaded screenshot
            job_input: dict[str, Any] = {"image": {"path": image}, "resume_text": resume}
        else:
            job_input = {"resume_text": resume, "job_description": JD}
        return {"kind": self.kind, "tier": self.tier, "input": job_input}


@dataclass
class Sent:
    """What happened to one planned job on the client side."""

    plan: Planned
    status_code: int | None = None
    error_code: str | None = None
    job_id: str | None = None
    tier: str | None = None
    events_url: str | None = None
    cancel_status: int | None = None
    seen: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    follow_problem: str | None = None


Marker = Callable[[int, random.Random], tuple[str, str]]
OnAccepted = Callable[[Sent], None]


def plan_jobs(
    n_jobs: int,
    n_users: int,
    rng: random.Random,
    *,
    marker: Marker | None = None,
    cancel_share: float = 0.03,
    follow: int = 12,
    free_every: int = 12,
    kinds: tuple[str, ...] = KINDS,
) -> list[Planned]:
    """Spread `n_jobs` over `n_users` users: mixed kinds, one in `free_every` on the free tier,
    a share cancelled by their user a few seconds in, `follow` streams read live."""
    users = [str(uuid.uuid4()) for _ in range(n_users)]
    plans = []
    for i in range(n_jobs):
        text, expect = marker(i, rng) if marker else ("", "succeeded")
        plans.append(
            Planned(
                index=i,
                user_id=users[i % n_users],
                kind=kinds[i % len(kinds)],
                tier="free" if i % free_every == free_every - 1 else "auto",
                marker=text,
                expect=expect,
                cancel_after=rng.uniform(1.0, 8.0) if rng.random() < cancel_share else None,
            )
        )
    for plan in rng.sample(plans, min(follow, len(plans))):
        plan.follow = True
    return plans


class Monitor:
    """Counts the scenario's jobs by status in Postgres every `every` s; survives DB restarts."""

    def __init__(self, database_url: str, user_ids: list[str], every: float = 0.5) -> None:
        self.database_url = database_url
        self.user_ids = user_ids
        self.every = every
        self.counts: dict[str, int] = {}
        self.peak_running = 0
        self.peak_live = 0
        self.seen_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self.every):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
                rows = conn.execute(
                    "select status, count(*) from cs_jobs where user_id = any(%s::uuid[])"
                    " group by status",
                    (self.user_ids,),
                ).fetchall()
            except psycopg.Error:
                conn = None
                continue
            self.counts = {status: int(n) for status, n in rows}
            self.seen_at = time.monotonic()
            running = self.counts.get("running", 0)
            self.peak_running = max(self.peak_running, running)
            self.peak_live = max(self.peak_live, running + self.counts.get("queued", 0))
        if conn is not None:
            conn.close()

    def total(self) -> int:
        return sum(self.counts.values())

    def terminal(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)

    def wait(self, condition: Callable[[Monitor], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(0.2)
        return False


class LeaseWatch:
    """Samples the remaining TTL of every job lease in Redis (how close renewals cut it, and
    that no lease outlives its TTL), and how far ahead the admission deadlines lie."""

    def __init__(self, redis_url: str, prefix: str, every: float = 0.25) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
        self.pattern = f"{prefix}job:*:lease"
        self.admission = f"{prefix}adm:*"
        self.every = every
        self.min_ms: int | None = None
        self.max_ms: int | None = None
        self.admission_ahead_s: float | None = None
        self.below_1s = 0
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-leases", daemon=True)

    def start(self) -> LeaseWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        rounds = 0
        while not self._stop.wait(self.every):
            rounds += 1
            try:
                self._sample_leases()
                if rounds % 8 == 0:
                    self._sample_admission()
            except Exception:  # noqa: BLE001 - Redis may be paused or cut on purpose
                self.errors += 1

    def _sample_leases(self) -> None:
        keys = list(self.client.scan_iter(match=self.pattern, count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        ttls = [t for t in pipe.execute() if t is not None and t >= 0]
        self.samples += len(ttls)
        self.below_1s += sum(1 for t in ttls if t < 1000)
        if ttls:
            low, high = min(ttls), max(ttls)
            self.min_ms = low if self.min_ms is None else min(self.min_ms, low)
            self.max_ms = high if self.max_ms is None else max(self.max_ms, high)

    def _sample_admission(self) -> None:
        """The furthest admission deadline from now (s): deadlines are set on the clock of the
        process that admits or renews, so a skewed worker moves them by its skew."""
        now_ms = int(time.time() * 1000)
        for key in self.client.scan_iter(match=self.admission, count=1000):
            top: Any = self.client.zrange(key, -1, -1, withscores=True)
            if top:
                ahead = (top[0][1] - now_ms) / 1000
                if self.admission_ahead_s is None or ahead > self.admission_ahead_s:
                    self.admission_ahead_s = round(ahead, 1)


class Load:
    """Submit the planned jobs, then cancel and follow some of them, in background threads."""

    def __init__(self, producer_url: str, plans: list[Planned], database_url: str) -> None:
        self.base = producer_url
        self.plans = plans
        self.sent = [Sent(p) for p in plans]
        self.user_ids = sorted({p.user_id for p in plans})
        self.monitor = Monitor(database_url, self.user_ids)
        self.submitted_all = threading.Event()
        self.submit_seconds = 0.0
        self.submitted_at = 0.0
        self._threads: list[threading.Thread] = []
        self._client = httpx.Client(
            base_url=producer_url,
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def accepted(self) -> list[Sent]:
        return [s for s in self.sent if s.job_id]

    def run(self, on_accepted: OnAccepted | None = None, parallel: int = 16) -> None:
        """Submit every job (`parallel` at a time); returns once all are answered."""
        self.monitor.start()
        started = time.monotonic()

        def one(sent: Sent) -> None:
            self._submit(sent)
            if sent.job_id is None:
                return
            if on_accepted:
                on_accepted(sent)
            if sent.plan.cancel_after is not None:
                timer = threading.Timer(sent.plan.cancel_after, self._cancel, args=(sent,))
                timer.daemon = True
                timer.start()
                self._threads.append(timer)
            if sent.plan.follow:
                thread = threading.Thread(target=self._follow, args=(sent,), daemon=True)
                thread.start()
                self._threads.append(thread)

        with ThreadPoolExecutor(parallel, thread_name_prefix="chaos-submit") as pool:
            list(pool.map(one, self.sent))
        self.submit_seconds = time.monotonic() - started
        self.submitted_at = time.monotonic()
        self.submitted_all.set()

    def _headers(self, sent: Sent) -> dict[str, str]:
        return {"Authorization": f"Bearer {sent.plan.token}"}

    def _upload(self, sent: Sent) -> str:
        """The sample screenshot, uploaded as a client does (signed URL, then Storage)."""
        from storage3 import SyncStorageClient

        grant = self._client.post(
            "/api/uploads", json={"content_type": "image/png"}, headers=self._headers(sent)
        ).json()
        base = grant["signed_url"].split("/object/upload/sign/", 1)[0] + "/"
        with SyncStorageClient(base, {}, http_client=httpx.Client(timeout=30)) as storage:
            storage.from_(grant["bucket"]).upload_to_signed_url(
                grant["path"],
                grant["token"],
                SCREENSHOT.read_bytes(),
                {"content-type": "image/png"},
            )
        return str(grant["path"])

    def _submit(self, sent: Sent) -> None:
        image = ""
        if sent.plan.kind == "match_from_image":
            try:
                image = self._upload(sent)
            except Exception as exc:  # noqa: BLE001 - an upload that failed is a refused submit
                sent.error_code = f"upload: {type(exc).__name__}"
                return
        try:
            response = self._client.post(
                "/api/jobs", json=sent.plan.body(image), headers=self._headers(sent)
            )
        except httpx.HTTPError as exc:
            sent.error_code = type(exc).__name__
            return
        sent.status_code = response.status_code
        payload = response.json()
        if response.status_code == 202:
            sent.job_id = payload["job"]["id"]
            sent.tier = payload["job"]["tier"]
            sent.events_url = payload["events_url"]
        else:
            sent.error_code = payload.get("error", {}).get("code")

    def _cancel(self, sent: Sent) -> None:
        try:
            response = self._client.post(
                f"/api/jobs/{sent.job_id}/cancel", headers=self._headers(sent)
            )
            sent.cancel_status = response.status_code
        except httpx.HTTPError:
            sent.cancel_status = 0

    def _follow(self, sent: Sent, deadline_s: float = 600.0) -> None:
        """Read the stream like EventSource: reconnect with Last-Event-ID until terminal."""
        deadline = time.monotonic() + deadline_s
        last: str | None = None
        with httpx.Client(base_url=self.base, timeout=httpx.Timeout(40.0)) as client:
            while time.monotonic() < deadline:
                headers = {"Last-Event-ID": last} if last else {}
                try:
                    with connect_sse(
                        client, "GET", sent.events_url or "", headers=headers
                    ) as source:
                        if source.response.status_code != 200:
                            time.sleep(0.5)
                            continue
                        for sse in source.iter_sse():
                            if not sse.data:
                                continue
                            data = json.loads(sse.data)
                            sent.seen.append((sse.id, sse.event, data))
                            last = sse.id or last
                            if sse.event == "status" and data.get("status") in TERMINAL:
                                return
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
        sent.follow_problem = "the live stream did not reach a terminal event in time"

    def drain(self, timeout: float) -> bool:
        """Wait until every job of the scenario's users is terminal in the database."""
        self.submitted_all.wait(timeout)
        return self.monitor.wait(
            lambda m: m.seen_at > self.submitted_at and m.terminal() == m.total() > 0, timeout
        )

    def join_clients(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.monitor.stop()
        self._client.close()
