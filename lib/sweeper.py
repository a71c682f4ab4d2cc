"""Fail and refund jobs whose submit died between insert and publish, in a thread of its own."""

from __future__ import annotations

import logging
import threading

from lib.config import Settings
from lib.events import emit_terminal
from lib.models import ErrorCode, JobStatus
from lib.state import State
from lib.store import Store

log = logging.getLogger("cs.executor")


class Sweeper:
    """Runs `sweep` every SWEEP_INTERVAL_SECONDS once started (0 disables it) until stopped."""

    def __init__(self, settings: Settings, store: Store, state: State) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[str]:
        """Fail and refund jobs whose submit died between insert and publish; close their
        streams and return their ids. Safe to run from every worker at once (the SQL skips
        locked rows). Raises AppError when the store is down."""
        swept = self.store.sweep_unenqueued(self.settings.sweep_after_seconds)
        for job_id in swept:
            log.warning("swept a job that was never enqueued", extra={"job_id": job_id})
            emit_terminal(
                self.state,
                job_id,
                JobStatus.FAILED,
                result=None,
                error={"code": ErrorCode.UNAVAILABLE, "message": "the job was never queued"},
                attempt=0,
            )
        return swept

    def start(self) -> None:
        """Start the sweeping thread (idempotent; nothing when SWEEP_INTERVAL_SECONDS is 0)."""
        interval = self.settings.sweep_interval_seconds
        if interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="sweeper")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping after the current pass."""
        self._stop.set()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:
                log.warning("sweep failed; will retry", exc_info=True)
