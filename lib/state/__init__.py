"""Live job state in Redis: admission, leases, per-job event streams and the cancel flag.

Every step that touches more than one key is one Lua script (`lib/state/scripts/`), so it is
atomic and identical on both adapters (TCP `redis`, Upstash REST `upstash-redis`).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from lib.state import scripts
from lib.state.backend import Entry, RedisBackend, pairs
from lib.state.keys import Keys
from lib.state.queue_view import QueueView, QueueViewState
from lib.state.results import (
    Acquire,
    Acquisition,
    Renewal,
    Signal,
    refusal,
)
from lib.state.streams import StreamSlotsState
from lib.state.viewers import WATCH_TTL_MS, ViewersState
from lib.state.waits import ModelSlotsState, SlotTake, Take

__all__ = [
    "State",
    "Acquire",
    "Acquisition",
    "RedisBackend",
    "Entry",
    "Keys",
    "QueueView",
    "Renewal",
    "Signal",
    "SlotTake",
    "Take",
    "WATCH_TTL_MS",
    "from_settings",
]

Publish = Literal["auto", "always", "never"]
# How long an open event stream's slot lasts after its last refresh (`hold_stream`); a stream
# refreshes it at least every STREAM_SLOT_TTL / 3 plus one heartbeat.
STREAM_SLOT_TTL = 45.0
# The longest an event stream lives (SSE_MAX_SECONDS's default plus one heartbeat), for the
# stream-slot set's TTL (lib/state/streams.py).
STREAM_LIFE = 295.0
# How often a live SSE reader refreshes its presence (`watch`, lib/state/viewers.py): the slot's
# cadence.
WATCH_REFRESH = STREAM_SLOT_TTL / 3


# How many recent service times per tier (`svc:<tier>`) the next-slot estimate averages.
SERVICE_SAMPLES = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


class State(ModelSlotsState, QueueViewState, StreamSlotsState, ViewersState):
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
        publish: Publish | bool = "auto",
        retry_after: int = 5,
        stream_slot_ttl: float = STREAM_SLOT_TTL,
        stream_life: float = STREAM_LIFE,
        box_ttl: float = 15.0,
    ) -> None:
        self.backend = backend
        self.keys = Keys(prefix)
        # tier -> (max live jobs in the tier, max live jobs per user in the tier)
        self.limits = limits or {"free": (20, 1), "paid": (100, 3)}
        self.admission_ttl_ms = int(admission_ttl * 1000)
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self.events_ttl = events_ttl
        # PUBLISH wakes readers that wait by subscription (Upstash REST); blocking XREAD readers
        # (TCP) need none. "auto" publishes only when such a reader watches, and on closing.
        self.publish: Publish = (
            publish if isinstance(publish, str) else ("always" if publish else "never")
        )
        self.retry_after = retry_after
        self.stream_slot_ttl_ms = int(stream_slot_ttl * 1000)
        # The stream-slot set's TTL, from each opening: a stream's longest life plus its slot's.
        self.stream_life_ms = int((stream_life + stream_slot_ttl) * 1000)
        # How long a worker box's announcement lasts without a beat (lib/boxes.py).
        self.box_ttl_ms = int(box_ttl * 1000)

    # Admission -------------------------------------------------------------------------------
    def admit(
        self,
        job_id: str,
        tier: str,
        user_id: str,
        *,
        first_event: tuple[str, dict[str, Any]] | None = None,
        index_max: int | None = None,
        boxes: list[str] | None = None,
    ) -> str | None:
        """Reserve a live slot for the job in its tier and for its user; with `first_event`
        (type, data), also start the job's event stream with it, with `index_max` also index
        the job for its user's event stream (capped at that length), and with `boxes` (the
        worker boxes' URLs; needs the other two) also pick the live box with the most free
        capacity among them (lib/boxes.py), all in the same round trip.

        Returns the picked box's URL, or None when none of `boxes` is live (or none were
        given, or the job was admitted already). Raises RateLimitError (code backpressure or
        user_concurrency, with retry_after); then nothing is written. Admitting the same job
        twice is a no-op.
        """
        tier_max, user_max = self.limits[tier]
        now = _now_ms()
        keys = [
            self.keys.tier(tier),
            self.keys.user(user_id, tier),
            self.keys.admission_stats(),
            self.keys.service_samples(tier),
        ]
        args: list[str | int] = [
            job_id,
            now,
            now + self.admission_ttl_ms,
            tier_max,
            user_max,
            self.admission_ttl_ms * 2,
            tier,
            self.retry_after * 1000,
            SERVICE_SAMPLES,
        ]
        if first_event is not None:
            event_type, data = first_event
            keys += [self.keys.events(job_id), self.keys.done(job_id)]
            args += [
                self.events_ttl,
                event_type,
                json.dumps(data, separators=(",", ":"), ensure_ascii=False),
            ]
            if index_max is not None:
                notify = self.keys.user_notify(user_id)
                keys += [self.keys.owner(job_id), self.keys.user_jobs(user_id), notify]
                args.append(index_max)
                if boxes:
                    keys += [self.keys.boxes(), self.keys.box_reservations()]
                    args += [secrets.randbelow(2**31), self.box_ttl_ms, *boxes]
        result = self.backend.run(scripts.ADMIT, keys, args)
        if result[0] != "ok":
            raise refusal(result, tier, tier_max if result[0] == "backpressure" else user_max)
        return str(result[1]) if len(result) > 1 and result[1] else None

    def admission_rejections(self) -> dict[tuple[str, str], int]:
        """How many admissions were refused since the stats began, by (tier, reason)."""
        raw = self.backend.command("HGETALL", self.keys.admission_stats()) or {}
        items = raw.items() if isinstance(raw, dict) else pairs(list(raw)).items()
        counts: dict[tuple[str, str], int] = {}
        for field, value in items:
            tier, _, reason = str(field).partition(":")
            counts[(tier, reason)] = int(value)
        return counts

    def release(
        self,
        job_id: str,
        tier: str,
        user_id: str,
        token: str = "",
        *,
        slots: bool = True,
        served: tuple[str, float] | None = None,
    ) -> None:
        """Drop the lease when `token` holds it, and free the admission slots unless
        `slots=False` (the job goes back to the broker for a retry). With `served` (kind,
        seconds: a job that succeeded), also record its service time, which refused
        admissions turn into `next_slot_s` (one more command). Idempotent but for that."""
        keys = [self.keys.lease(job_id), self.keys.tier(tier), self.keys.user(user_id, tier)]
        args: list[str | int] = [token, job_id, int(slots)]
        if served is not None:
            keys.append(self.keys.service_samples(tier))
            args += [served[0], max(0, int(served[1] * 1000)), SERVICE_SAMPLES]
        self.backend.run(scripts.RELEASE, keys, args)

    def live(self, tier: str) -> int:
        """The number of live (admitted, unexpired) jobs in a tier."""
        return int(self.backend.run(scripts.LIVE, [self.keys.tier(tier)], [_now_ms()]))

    def admission_scan(self, tier: str, limit: int) -> tuple[int, list[str]]:
        """Drop the tier's expired admissions; return how many, and the `limit` members with
        the earliest deadlines (the reconciler frees those whose jobs are terminal)."""
        dropped, members = self.backend.run(
            scripts.ADMISSION_SCAN, [self.keys.tier(tier)], [_now_ms(), max(1, limit)]
        )
        return int(dropped), [str(m) for m in members or []]

    # Leases ----------------------------------------------------------------------------------
    def acquire(self, job_id: str, tier: str, user_id: str, token: str) -> Acquisition:
        """Take the job's lease for one attempt.

        Returns (ACQUIRED, watch) where watch is the transport of a live SSE reader ("tcp",
        "rest") or None, (DONE, terminal status) when the stream is closed, or (BUSY,
        remaining lease ms) when another attempt holds it.
        """
        deadline = _now_ms() + self.admission_ttl_ms
        result = self.backend.run(
            scripts.ACQUIRE,
            self._lease_keys(job_id, tier, user_id),
            [token, self.lease_ttl_ms, job_id, deadline, self.admission_ttl_ms * 2],
        )
        return Acquisition(Acquire(str(result[0])), result[1] if len(result) > 1 else None)

    def renew_many(self, leases: list[tuple[str, str, str, str, bool]]) -> list[Renewal]:
        """Extend the leases of many (job id, tier, user id, token, admission) at once, and
        their admission deadlines where admission is true, in one round trip. Each costs 3
        Redis commands, 6 when its admission deadlines are refreshed too."""
        deadline = _now_ms() + self.admission_ttl_ms
        calls: list[tuple[scripts.Script, list[str], list[str | int]]] = [
            (
                scripts.RENEW,
                self._lease_keys(job_id, tier, user_id),
                [
                    token,
                    self.lease_ttl_ms,
                    job_id,
                    deadline,
                    self.admission_ttl_ms * 2,
                    int(admission),
                ],
            )
            for job_id, tier, user_id, token, admission in leases
        ]
        out = []
        for result in self.backend.run_many(calls):
            done = result[1] if len(result) > 1 else None
            watch = result[2] if len(result) > 2 else None
            out.append(
                Renewal(bool(result[0]), str(done) if done else None, str(watch) if watch else None)
            )
        return out

    def _lease_keys(self, job_id: str, tier: str, user_id: str) -> list[str]:
        return [
            self.keys.lease(job_id),
            self.keys.done(job_id),
            self.keys.tier(tier),
            self.keys.user(user_id, tier),
            self.keys.watch(job_id),
        ]

    # Events ----------------------------------------------------------------------------------
    def emit(
        self,
        job_id: str,
        events: list[tuple[str, dict[str, Any]]],
        *,
        terminal: str | None = None,
        refresh_ttl: bool = False,
        publish: bool | None = None,
    ) -> str | None:
        """Append events to the job's stream; a `terminal` status closes it.

        `publish` says whether to PUBLISH the new id for subscribed readers; None leaves it to
        EVENTS_PUBLISH ("auto" publishes the closing events only: an attempt, which knows
        whether a subscribed reader watches, passes its own answer).
        Returns the last entry id, or None when the stream was already closed (the job is
        terminal or cancelled), in which case nothing was written.
        """
        if self.publish != "auto":
            publish = self.publish == "always"
        elif publish is None:
            publish = terminal is not None
        args: list[str | int] = [
            self.events_ttl,
            int(refresh_ttl),
            int(publish),
            terminal or "",
        ]
        for event_type, data in events:
            args += [event_type, json.dumps(data, separators=(",", ":"), ensure_ascii=False)]
        result = self.backend.run(
            scripts.EMIT,
            [
                self.keys.events(job_id),
                self.keys.done(job_id),
                self.keys.notify(job_id),
                self.keys.owner(job_id),
            ],
            args,
        )
        return str(result) if result else None

    def append(self, job_id: str, event_type: str, data: dict[str, Any]) -> str | None:
        """One event by one plain XADD (a watched flush's floor). NOMKSTREAM never creates a
        stream (so never one without a TTL); a stream closed by EMIT refuses it (its last id
        is the maximum). Returns the entry id, or None when the stream is closed or gone.
        Publishes nothing: a reader that waits by subscription needs `emit(publish=True)`."""
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        try:
            entry = self.backend.command(
                "XADD", self.keys.events(job_id), "NOMKSTREAM", "*", "t", event_type, "d", payload
            )
        except Exception as exc:  # the server's own refusal; a dead Redis is UnavailableError
            if "exhausted the last possible ID" in str(exc):
                return None
            raise
        return str(entry) if entry else None

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

    def first_use(self, jti: str, ttl_seconds: int) -> bool:
        """Record a delivery signature's `jti` for `ttl_seconds` (at least 1); return False when
        it was recorded already (a replay). One command (SET NX EX)."""
        answer = self.backend.command(
            "SET", self.keys.signature(jti), "1", "NX", "EX", max(1, int(ttl_seconds))
        )
        return answer is not None

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
        # Longer than the time between two refreshes: a third of it plus one heartbeat.
        stream_slot_ttl=max(STREAM_SLOT_TTL, 3 * settings.sse_heartbeat_seconds),
        # A stream ends at SSE_MAX_SECONDS; its last wait may add a heartbeat.
        stream_life=settings.sse_max_seconds + settings.sse_heartbeat_seconds,
        box_ttl=3 * settings.box_heartbeat_seconds,
    )
