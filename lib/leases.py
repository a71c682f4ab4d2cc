"""The leases of one worker process's running attempts, kept alive by one heartbeat thread.

`Leases.start()` starts the heartbeat (renews every held lease and its admission deadlines in
one round trip) and the watch listener (a new viewer of a held job starts its streaming at
once, and its last viewer leaving stops it at once); `stop()` ends both. Nothing runs until
`start()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lib.events import JobEvents
from lib.state import Renewal, State

log = logging.getLogger("cs.executor")


@dataclass
class Lease:
    """One attempt's hold on a job, and what the heartbeat learnt about it."""

    job_id: str
    tier: str
    user_id: str
    token: str
    lost: bool = False
    done: str | None = None
    started: float = field(default_factory=time.monotonic)
    # When the last ACQUIRE/RENEW that succeeded was sent: Redis keeps the lease at least
    # LEASE_TTL_SECONDS after that, so the attempt may write until shortly before then.
    renewed: float = field(default_factory=time.monotonic)
    # When the admission deadlines were last pushed forward (ACQUIRE does it first).
    admitted: float = field(default_factory=time.monotonic)
    # The transport of a live SSE reader ("tcp", "rest"), or None: the flush policy reads it.
    watch: str | None = None
    # When the watch channel last changed `watch` (a viewer came, or the last one left): a
    # heartbeat sent before then read the key before that change, so its answer is not applied.
    watch_heard: float = 0.0
    # The attempt's event writer, so a retry writes what it holds.
    events: JobEvents | None = None
    # Output delivered by earlier attempts of this delivery (a repair's first attempt), and the
    # kind's typical output size: what the refund rule weighs when the job fails or is cancelled.
    delivered: int = 0
    typical: int | None = None
    # A pipeline's step this delivery runs, and the results of the steps before it.
    step: int = 0
    steps: dict[str, Any] = field(default_factory=dict)
    # Detached mode: the (tier, model) whose slot the job holds across processes, renewed with
    # the lease (lib/state/waits.py), so a dead process's slots lapse with its leases.
    slot: tuple[str, str] | None = None

    def delivered_chars(self) -> int:
        """The most output any attempt of this delivery wrote to the job's stream."""
        return max(self.delivered, self.events.delivered if self.events is not None else 0)


class Leases:
    """The held leases; one heartbeat thread renews them all, one listener notes viewers."""

    def __init__(self, state: State, interval: float, admission_ttl: float = 1800) -> None:
        self.state = state
        self.interval = interval
        # Admission deadlines last ADMISSION_TTL_SECONDS: push them forward once half has gone.
        self.admission_refresh = admission_ttl / 2
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the heartbeat and the watch listener (idempotent)."""
        if self._threads:
            return
        self._threads = [
            threading.Thread(target=self._run, name="lease-heartbeat", daemon=True),
            # New viewers are announced on a channel, so a held attempt streams at once.
            threading.Thread(target=self._listen, name="watch-listener", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads; held leases then lapse unless released."""
        self._stop.set()

    def add(self, lease: Lease) -> None:
        """Renew `lease` from now on."""
        with self._lock:
            self._held[lease.token] = lease

    def remove(self, lease: Lease) -> None:
        """Stop renewing `lease`."""
        with self._lock:
            self._held.pop(lease.token, None)

    def count(self) -> int:
        """How many leases are held."""
        with self._lock:
            return len(self._held)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = list(self._held.values())
            if not held:
                continue
            sent = time.monotonic()
            refresh = [sent - x.admitted >= self.admission_refresh for x in held]
            try:
                # One round trip for every lease of this process: a per-lease loop grows with
                # the number of running jobs and, under load, outlasts the lease itself.
                answers = self.state.renew_many(
                    [
                        (x.job_id, x.tier, x.user_id, x.token, again)
                        for x, again in zip(held, refresh, strict=True)
                    ]
                )
            except Exception:  # Redis down: the attempts fence themselves (Executor._fenced)
                log.warning("lease renewal failed", extra={"running": len(held)})
                continue
            slots = [
                (x.job_id, *x.slot) for x, a in zip(held, answers, strict=True) if x.slot and a[0]
            ]
            if slots:
                try:
                    self.state.renew_slots(slots)
                except Exception:  # Redis down: the slots lapse with the leases
                    log.warning("model slot renewal failed", extra={"running": len(slots)})
            with self._lock:  # the listener changes `watch` under it too
                for lease, again, answer in zip(held, refresh, answers, strict=True):
                    self._apply(lease, again, answer, sent)

    @staticmethod
    def _apply(lease: Lease, again: bool, answer: Renewal, sent: float) -> None:
        ok, done, watch = answer
        if ok:
            lease.renewed = sent
            if again:
                lease.admitted = sent
        lease.lost = lease.lost or not ok
        lease.done = lease.done or done  # a cancel heard meanwhile stays heard
        if lease.watch_heard < sent:  # else the channel's news is newer than this read
            lease.watch = watch

    def _listen(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                for signal in self.state.watchers(self._stop):
                    delay = 1.0
                    with self._lock:
                        for lease in self._held.values():
                            if lease.job_id != signal.job_id:
                                continue
                            if signal.done:  # a cancel: the attempt stops at its next check
                                lease.done = signal.done
                            else:  # a new viewer (its transport), or the last one left
                                lease.watch = signal.watch
                                lease.watch_heard = time.monotonic()
            except Exception:  # noqa: BLE001 - Redis down: the heartbeat still reports viewers
                log.warning("watch channel unavailable; viewers are noticed at the next heartbeat")
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
