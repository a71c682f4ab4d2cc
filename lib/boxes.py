"""Scale-out across worker boxes without a load balancer.

QStash delivers each message to one URL, so the producer chooses the box when it publishes. Each
worker process announces its box in Redis every BOX_HEARTBEAT_SECONDS (`Heartbeat`): the box's
URL (its own WORKER_URL), WORKER_MAX_JOBS and the jobs the process runs now. An announcement
lapses after three beats, so a box that dies stops being chosen within 3 x BOX_HEARTBEAT_SECONDS.

The producer picks inside its admission script (`State.admit(boxes=...)`, no extra round trip):
among the boxes of WORKER_URLS that are live, the one with the most free capacity (max minus the
jobs running on it, minus the jobs sent to it since its last beat), ties at random. When no
listed box is live (no announcement yet, Redis emptied), it publishes to the first listed URL,
as a single-box deployment always did. The reconciler re-publishes a dead box's jobs the same way
(`Registry.pick`), so they go to a live box.

The layout of the `boxes` hash is in lib/state/keys.py and the scripts in
lib/state/scripts/boxes.py.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib.config import Settings
from lib.errors import AppError
from lib.state import State, scripts
from lib.state.backend import pairs

log = logging.getLogger("cs.boxes")

# A heartbeat sweeps lapsed announcements every SWEEP_EVERY beats; the hash is kept for
# HASH_TTL_BEATS beats after a sweep, so it lapses only when every box is gone.
SWEEP_EVERY = 10
HASH_TTL_BEATS = 15


@dataclass(frozen=True)
class Box:
    """One live box as its announcements say: its URL, its max jobs, the jobs it runs, how
    many processes announced it."""

    url: str
    max_jobs: int
    running: int
    processes: int

    @property
    def free(self) -> int:
        return self.max_jobs - self.running


def _now_ms() -> int:
    return int(time.time() * 1000)


class Registry:
    """The box announcements in Redis (one hash under REDIS_PREFIX, lib/state/keys.py)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._keys = [state.keys.boxes(), state.keys.box_reservations()]

    def beat(
        self, url: str, process_id: str, running: int, max_jobs: int, *, sweep: bool = True
    ) -> int | None:
        """Announce one process of box `url` for the announcement TTL: it runs `running` jobs of
        the box's `max_jobs`. With `sweep`, also drop lapsed announcements, keep the hash for
        HASH_TTL_BEATS and return the number of live announcements (else None). One script, 3
        commands (about 5 with `sweep`). Raises UnavailableError when Redis is down."""
        value = f"{_now_ms() + self.state.box_ttl_ms} {max(0, running)} {max(0, max_jobs)}"
        answer = self._beat(url, process_id, value, sweep)
        return int(answer) if answer is not None else None

    def leave(self, url: str, process_id: str) -> None:
        """Withdraw one process's announcement (it drains or stops). Raises UnavailableError."""
        self._beat(url, process_id, "", True)

    def _beat(self, url: str, process_id: str, value: str, sweep: bool) -> Any:
        # The hash outlives SWEEP_EVERY beats (the TTL is 3 beats): only sweeps refresh it.
        hash_ttl = self.state.box_ttl_ms * HASH_TTL_BEATS // 3
        return self.state.backend.run(
            scripts.BOX_BEAT,
            self._keys,
            [f"{url} {process_id}", value, _now_ms(), hash_ttl, url, int(sweep)],
        )

    def pick(self, urls: list[str]) -> str | None:
        """The live box of `urls` with the most free capacity (ties at random), with one job
        reserved on it; None when none of them is live. One script."""
        if not urls:
            return None
        picked = self.state.backend.run(
            scripts.PICK_BOX,
            self._keys,
            [_now_ms(), secrets.randbelow(2**31), self.state.box_ttl_ms, *urls],
        )
        return str(picked) if picked else None

    def live(self) -> dict[str, Box]:
        """Every box with a live announcement, by URL (health checks, `cs doctor`, tests)."""
        raw = self.state.backend.command("HGETALL", self.state.keys.boxes()) or {}
        items = raw.items() if isinstance(raw, dict) else pairs(list(raw)).items()
        now = _now_ms()
        boxes: dict[str, Box] = {}
        for field, value in items:
            url, _, _ = str(field).partition(" ")
            parts = str(value).split(" ")
            if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) <= now:
                continue
            running, max_jobs = int(parts[1]), int(parts[2])
            seen = boxes.get(url)
            if seen is None:
                boxes[url] = Box(url, max_jobs, running, 1)
            else:
                boxes[url] = Box(
                    url, max(seen.max_jobs, max_jobs), seen.running + running, seen.processes + 1
                )
        return boxes


def destination(settings: Settings, picked: str | None) -> str:
    """The box to publish to: the picked one when WORKER_URLS lists it, else the first listed
    (no box announced itself yet: a fresh deployment, or Redis lost its keys)."""
    boxes = settings.boxes
    if picked and picked in boxes:
        return picked
    return boxes[0] if boxes else settings.box_url


class Heartbeat:
    """Announces this worker process's box every BOX_HEARTBEAT_SECONDS in a thread of its own,
    until stopped or draining (then it withdraws: a draining box takes no new jobs). Only when
    WORKER_URLS lists several boxes: with one, nothing is announced.

    `running` counts the jobs this process runs now; `draining` says it stops taking work."""

    def __init__(
        self,
        settings: Settings,
        state: State,
        running: Callable[[], int],
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        # One box: the producer picks nothing, so the box announces nothing (no commands).
        several = len(settings.boxes) > 1
        self.url = settings.worker_url.rstrip("/") if several else ""
        self.max_jobs = settings.max_jobs
        self.interval = settings.box_heartbeat_seconds
        self.registry = Registry(state)
        self.process_id = uuid.uuid4().hex[:12]
        self._running = running
        self._draining = draining
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._beats = 0

    def start(self) -> None:
        """Announce now, then every beat (idempotent; nothing with one box). Never raises:
        Redis down is logged."""
        if self._thread is not None or not self.url:
            return
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="box-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and withdraw the announcement at once (best effort)."""
        self._stop.set()
        if self.url:
            self._withdraw()

    def beat(self) -> bool:
        """One beat: announce, or withdraw while draining. False when Redis failed."""
        try:
            if self._draining():
                self.registry.leave(self.url, self.process_id)
            else:
                sweep = self._beats % SWEEP_EVERY == 0
                self.registry.beat(
                    self.url, self.process_id, self._running(), self.max_jobs, sweep=sweep
                )
                self._beats += 1
        except Exception as exc:  # Redis down (AppError) or anything else: the thread lives on
            if not self._failing:
                code = exc.code if isinstance(exc, AppError) else type(exc).__name__
                log.warning("box heartbeat failed; retrying", extra={"code": code})
            self._failing = True
            return False
        if self._failing:
            log.info("box heartbeat restored")
        self._failing = False
        return True

    def _withdraw(self) -> None:
        try:
            self.registry.leave(self.url, self.process_id)
        except AppError:
            pass  # the announcement lapses by itself within 3 beats

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
