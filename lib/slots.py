"""Per process, at most LLM_MAX_CONCURRENCY_{PAID,FREE} model calls at once per tier and model."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lib.config import Settings
from lib.errors import RetryableError
from lib.models import ErrorCode, Tier


class ModelSlots:
    """One bounded semaphore per (tier, model); thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, tier: str, model: str) -> Iterator[None]:
        """Hold a slot of `tier` and `model` for the block.

        Raises RetryableError(rate_limited, status 429, retry after 10 s) when none frees up
        within half a second. In detached mode it holds nothing: the job took its slot across
        every process before it started (lib/state/waits.py)."""
        if self.settings.execution_mode == "detached":
            yield
            return
        key = f"{tier}:{model}"
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                s = self.settings
                limit = (
                    s.llm_max_concurrency_paid if tier == Tier.PAID else s.llm_max_concurrency_free
                )
                slot = self._slots[key] = threading.BoundedSemaphore(limit)
        if not slot.acquire(timeout=0.5):
            raise RetryableError(
                "model concurrency limit reached",
                code=ErrorCode.RATE_LIMITED,
                status=429,
                retry_after=10,
            )
        try:
            yield
        finally:
            slot.release()
