"""Detached mode's model slots: at most N jobs per (tier, model) at once across every worker
process, and an ordered wait for the rest (lib/state/scripts/waits.py TAKE_SLOT, RELEASE_SLOT).

A `State` mixin: it uses the state's backend, keys and lease TTL. Slot holders lapse with the
job's lease unless renewed (`renew_slots`, from the lease heartbeat), so the slots of a killed
process come back by themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from lib.state import scripts

if TYPE_CHECKING:
    from lib.state.backend import RedisBackend
    from lib.state.keys import Keys


class Take(StrEnum):
    OK = "ok"
    WAIT = "wait"
    STALE = "stale"


@dataclass(frozen=True)
class SlotTake:
    """What TAKE_SLOT decided: the job's delivery generation now, its waits so far, and (when
    it waits) how many jobs wait ahead of it."""

    outcome: Take
    generation: int
    waits: int = 0
    ahead: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class ModelSlotsState:
    """The model-slot operations of `lib.state.State`."""

    backend: RedisBackend
    keys: Keys
    lease_ttl_ms: int

    def _slot_keys(self, tier: str, model: str) -> list[str]:
        k = self.keys
        return [
            k.slot_holders(tier, model),
            k.model_queue(tier, model),
            k.model_queue_seen(tier, model),
            k.model_queue_gen(tier, model),
        ]

    def _slot_key_ttl_ms(self, wait_ms: int) -> int:
        return max(2 * self.lease_ttl_ms, 3 * wait_ms, 60_000)

    def take_slot(
        self,
        job_id: str,
        tier: str,
        model: str,
        *,
        limit: int,
        generation: int | None,
        wait_seconds: float,
        user_id: str = "",
    ) -> SlotTake:
        """Take a slot of `tier` and `model` for the job, or put it in the model's queue.

        A job that waits joins the line behind every job already in it (order of arrival),
        so a waiter's position only counts down. `generation` is the one the delivery carries
        (None: any, e.g. the producer's first message or a reconciler heal).
        A waiter that is not seen again within 3 x `wait_seconds` leaves the queue.
        Raises AppError (unavailable) when Redis is down."""
        now = _now_ms()
        wait_ms = int(wait_seconds * 1000)
        result = self.backend.run(
            scripts.TAKE_SLOT,
            [*self._slot_keys(tier, model), self.keys.wait_stats()],
            [
                job_id,
                now,
                now + self.lease_ttl_ms,
                limit,
                now + 3 * wait_ms,
                self._slot_key_ttl_ms(wait_ms),
                "" if generation is None else generation,
                f"{tier}:{model}",
                user_id,
            ],
        )
        outcome = Take(str(result[0]))
        gen = int(result[1])
        waits = int(result[2]) if len(result) > 2 else 0
        ahead = int(result[3]) if len(result) > 3 else 0
        return SlotTake(outcome, gen, waits, ahead)

    def release_slot(
        self, job_id: str, tier: str, model: str, *, limit: int, ended: bool
    ) -> list[tuple[str, int, str]]:
        """Give the job's slot back (and, when it `ended`, forget its generation and waits).
        Returns the waiters that may take the freed slots, head first: (job id, generation,
        user id).
        Idempotent. Raises AppError (unavailable) when Redis is down."""
        flat = self.backend.run(
            scripts.RELEASE_SLOT,
            self._slot_keys(tier, model),
            [job_id, _now_ms(), limit, int(ended)],
        )
        flat = list(flat or [])
        return [
            (str(flat[i]), int(flat[i + 1]), str(flat[i + 2])) for i in range(0, len(flat) - 2, 3)
        ]

    def renew_slots(self, held: list[tuple[str, str, str]]) -> None:
        """Push forward the lapse of the slots of many (job id, tier, model), one round trip."""
        if not held:
            return
        until = _now_ms() + self.lease_ttl_ms
        ttl = self._slot_key_ttl_ms(0)
        self.backend.run_many(
            [
                (scripts.RENEW_SLOT, [self.keys.slot_holders(tier, model)], [job_id, until, ttl])
                for job_id, tier, model in held
            ]
        )

    def queue_position(self, job_id: str, tier: str, model: str) -> tuple[int, int]:
        """(position, ahead): the job's 1-based place in its model's queue and how many jobs
        wait before it; (0, 0) when it does not wait. One command."""
        rank = self.backend.command("ZRANK", self.keys.model_queue(tier, model), job_id)
        if rank is None:
            return 0, 0
        return int(rank) + 1, int(rank)

    def waiting(self, job_id: str, tier: str, model: str) -> bool:
        """Whether the job waits in its model's queue and polled it recently (the reconciler
        leaves such a job alone). One command."""
        lapse = self.backend.command("ZSCORE", self.keys.model_queue_seen(tier, model), job_id)
        return lapse is not None and float(lapse) > _now_ms()

    def slots_held(self, tier: str, model: str) -> int:
        """How many jobs hold a slot of `tier` and `model` (lapsed holders included until the
        next take or release drops them)."""
        return int(self.backend.command("ZCARD", self.keys.slot_holders(tier, model)) or 0)

    def job_waits(self, job_id: str, tier: str, model: str) -> int:
        """How many times the job waited for its model so far (while it is not finished)."""
        value = self.backend.command(
            "HGET", self.keys.model_queue_gen(tier, model), f"{job_id}:waits"
        )
        return int(value or 0)

    def wait_counts(self) -> dict[str, int]:
        """Waits since the stats began, by "<tier>:<model>"."""
        from lib.state.backend import pairs

        raw = self.backend.command("HGETALL", self.keys.wait_stats()) or {}
        items = raw.items() if isinstance(raw, dict) else pairs(list(raw)).items()
        return {str(k): int(v) for k, v in items}
