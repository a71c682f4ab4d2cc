"""Live job state in Redis: admission, leases, per-job event streams and the cancel flag.

Every step that touches more than one key is one Lua script (`lib/state/scripts.py`), so it is
atomic and identical on both adapters (TCP `redis`, Upstash REST `upstash-redis`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from lib.errors import RateLimitError
from lib.models import ErrorCode
from lib.state import scripts
from lib.state.backend import Entry, RedisBackend
from lib.state.keys import Keys

__all__ = ["State", "RedisBackend", "Entry", "Keys", "from_settings"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class State:
    """Domain operations over a `RedisBackend`."""

    def __init__(
        self,
        backend: RedisBackend,
        *,
        prefix: str = "cs:",
        limits: dict[str, tuple[int, int]] | None = None,
        admission_ttl: float = 1800,
        lease_ttl: float = 30,
        events_ttl: int = 172800,
        publish: bool = True,
        retry_after: int = 5,
    ) -> None:
        self.backend = backend
        self.keys = Keys(prefix)
        # tier -> (max live jobs in the tier, max live jobs per user in the tier)
        self.limits = limits or {"free": (20, 1), "paid": (100, 3)}
        self.admission_ttl_ms = int(admission_ttl * 1000)
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self.events_ttl = events_ttl
        self.publish = publish
        self.retry_after = retry_after

    # Admission -------------------------------------------------------------------------------
    def admit(self, job_id: str, tier: str, user_id: str) -> None:
        """Reserve a live slot for the job in its tier and for its user.

        Raises RateLimitError (code backpressure or user_concurrency, with retry_after).
        Admitting the same job twice is a no-op.
        """
        tier_max, user_max = self.limits[tier]
        now = _now_ms()
        result = self.backend.run(
            scripts.ADMIT,
            [self.keys.tier(tier), self.keys.user(user_id, tier)],
            [
                job_id,
                now,
                now + self.admission_ttl_ms,
                tier_max,
                user_max,
                self.admission_ttl_ms * 2,
            ],
        )
        outcome = result[0]
        if outcome == "backpressure":
            raise RateLimitError(
                f"the {tier} queue is full; try again shortly",
                code=ErrorCode.BACKPRESSURE,
                retry_after=self.retry_after,
            )
        if outcome == "user_concurrency":
            raise RateLimitError(
                f"you already have {user_max} active {tier} job(s); wait for one to finish",
                code=ErrorCode.USER_CONCURRENCY,
                retry_after=self.retry_after,
            )

    def release(
        self, job_id: str, tier: str, user_id: str, token: str = "", *, slots: bool = True
    ) -> None:
        """Drop the lease when `token` holds it, and free the admission slots unless
        `slots=False` (the job goes back to the broker for a retry). Idempotent."""
        self.backend.run(
            scripts.RELEASE,
            [self.keys.lease(job_id), self.keys.tier(tier), self.keys.user(user_id, tier)],
            [token, job_id, int(slots)],
        )

    def live(self, tier: str) -> int:
        """The number of live (admitted, unexpired) jobs in a tier."""
        return int(self.backend.run(scripts.LIVE, [self.keys.tier(tier)], [_now_ms()]))

    def live_for_user(self, user_id: str, tier: str) -> int:
        return int(self.backend.run(scripts.LIVE, [self.keys.user(user_id, tier)], [_now_ms()]))

    # Leases ----------------------------------------------------------------------------------
    def acquire(self, job_id: str, tier: str, user_id: str, token: str) -> tuple[str, Any]:
        """Take the job's lease for one attempt.

        Returns ("acquired", None), ("done", terminal status) when the stream is closed, or
        ("busy", remaining lease ms) when another attempt holds it.
        """
        deadline = _now_ms() + self.admission_ttl_ms
        result = self.backend.run(
            scripts.ACQUIRE,
            [
                self.keys.lease(job_id),
                self.keys.done(job_id),
                self.keys.tier(tier),
                self.keys.user(user_id, tier),
            ],
            [token, self.lease_ttl_ms, job_id, deadline, self.admission_ttl_ms * 2],
        )
        return str(result[0]), (result[1] if len(result) > 1 else None)

    def renew(self, job_id: str, tier: str, user_id: str, token: str) -> tuple[bool, str | None]:
        """Extend the lease and admission deadlines. Returns (still held, terminal status)."""
        deadline = _now_ms() + self.admission_ttl_ms
        result = self.backend.run(
            scripts.RENEW,
            [
                self.keys.lease(job_id),
                self.keys.done(job_id),
                self.keys.tier(tier),
                self.keys.user(user_id, tier),
            ],
            [token, self.lease_ttl_ms, job_id, deadline, self.admission_ttl_ms * 2],
        )
        done = result[1] if len(result) > 1 else None
        return bool(result[0]), (str(done) if done else None)

    def renew_many(self, leases: list[tuple[str, str, str, str]]) -> list[tuple[bool, str | None]]:
        """`renew` for many (job id, tier, user id, token) at once, in one round trip."""
        deadline = _now_ms() + self.admission_ttl_ms
        calls: list[tuple[scripts.Script, list[str], list[str | int]]] = [
            (
                scripts.RENEW,
                [
                    self.keys.lease(job_id),
                    self.keys.done(job_id),
                    self.keys.tier(tier),
                    self.keys.user(user_id, tier),
                ],
                [token, self.lease_ttl_ms, job_id, deadline, self.admission_ttl_ms * 2],
            )
            for job_id, tier, user_id, token in leases
        ]
        results = self.backend.run_many(calls)
        out = []
        for result in results:
            done = result[1] if len(result) > 1 else None
            out.append((bool(result[0]), str(done) if done else None))
        return out

    # Events ----------------------------------------------------------------------------------
    def emit(
        self,
        job_id: str,
        events: list[tuple[str, dict[str, Any]]],
        *,
        terminal: str | None = None,
        refresh_ttl: bool = False,
    ) -> str | None:
        """Append events to the job's stream; a `terminal` status closes it.

        Returns the last entry id, or None when the stream was already closed (the job is
        terminal or cancelled), in which case nothing was written.
        """
        args: list[str | int] = [
            self.events_ttl,
            int(refresh_ttl),
            int(self.publish),
            terminal or "",
        ]
        for event_type, data in events:
            args += [event_type, json.dumps(data, separators=(",", ":"), ensure_ascii=False)]
        result = self.backend.run(
            scripts.EMIT,
            [self.keys.events(job_id), self.keys.done(job_id), self.keys.notify(job_id)],
            args,
        )
        return str(result) if result else None

    def read(self, job_id: str, after: str = "0", count: int = 500) -> list[Entry]:
        return self.backend.read(self.keys.events(job_id), after, count)

    def wait(self, job_id: str, after: str, timeout: float, count: int = 500) -> list[Entry]:
        """Entries after `after`, waiting up to `timeout` s for one (blocking read, no polling)."""
        return self.backend.wait(
            self.keys.events(job_id), self.keys.notify(job_id), after, timeout, count
        )

    def lease_ms(self, job_id: str) -> int:
        """How long the job's lease is still held (ms); 0 when nobody holds it."""
        return max(0, int(self.backend.command("PTTL", self.keys.lease(job_id)) or 0))

    def done(self, job_id: str) -> str | None:
        """The job's terminal status once its stream is closed (the cancel flag), else None."""
        value = self.backend.command("GET", self.keys.done(job_id))
        return str(value) if value else None

    def ping(self) -> None:
        self.backend.ping()

    def close(self) -> None:
        self.backend.close()


def backend_from_settings(settings: Any) -> RedisBackend:
    if settings.redis_url:
        from lib.state.tcp import TcpBackend

        return TcpBackend(settings.redis_url)
    from lib.state.rest import RestBackend

    return RestBackend(settings.upstash_redis_rest_url, settings.upstash_redis_rest_token)


def from_settings(settings: Any, backend: RedisBackend | None = None) -> State:
    return State(
        backend or backend_from_settings(settings),
        prefix=settings.redis_prefix,
        limits={
            "free": (settings.queue_max_free, settings.user_max_active_free),
            "paid": (settings.queue_max_paid, settings.user_max_active_paid),
        },
        admission_ttl=settings.admission_ttl_seconds,
        lease_ttl=settings.lease_ttl_seconds,
        events_ttl=settings.events_ttl_seconds,
        publish=settings.events_publish,
        retry_after=settings.retry_after_seconds,
    )
