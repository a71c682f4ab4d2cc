"""Property tests: the admission Lua scripts' invariants on a real Redis under random sequences of
admit/acquire/renew/release/expiry.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from helpers.backends import live_for_user, renew
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import lib.state
from lib.errors import RateLimitError
from lib.state import State
from lib.state.tcp import TcpBackend

# Admission invariants ---------------------------------------------------------------------------
TIER_LIMITS = {"free": (2, 1), "paid": (4, 2)}  # tier: (max live in the tier, max per user)
TTL_MS = 60_000  # the admission deadline; time is a fake clock, so nothing lapses by itself
USERS = ["ann", "bob", "cyd"]
# One more job per user and tier than the per-user limits, so every refusal can happen.
JOBS = [(f"{t}-{u}-{n}", t, u) for t in TIER_LIMITS for u in USERS for n in (1, 2, 3)]
JOB = st.sampled_from(JOBS)
Key = tuple[str, ...]


class Clock:
    """The milliseconds lib.state passes to the scripts as `now` (deadlines are now + TTL)."""

    START = 1_700_000_000_000

    def __init__(self) -> None:
        self.ms = self.START

    def __call__(self) -> int:
        return self.ms


class Model:
    """The admission sorted sets exactly as the scripts keep them (job -> deadline ms), expired
    members included until a script prunes them, plus leases and closed streams."""

    def __init__(self) -> None:
        self.sets: dict[Key, dict[str, int]] = {}
        self.leases: dict[str, str] = {}
        self.done: set[str] = set()
        # Jobs that ACQUIRE put back into their sets after their admission had lapsed (or was
        # released): the only way a set may hold more than its limit, since an admitted and
        # charged job is never refused its run.
        self.late: set[str] = set()

    def zset(self, key: Key) -> dict[str, int]:
        return self.sets.setdefault(key, {})

    def prune(self, key: Key, now: int) -> None:  # ZREMRANGEBYSCORE key -inf now
        members = self.zset(key)
        for job in [j for j, deadline in members.items() if deadline <= now]:
            del members[job]

    def live(self, key: Key, now: int) -> set[str]:
        return {j for j, deadline in self.zset(key).items() if deadline > now}


class AdmissionMachine(RuleBasedStateMachine):
    """Random admit/acquire/renew/release/finish/lapse sequences on a real Redis, checked step by
    step against `Model`. The class attributes are set by the test (a real backend and clock)."""

    backend: TcpBackend
    clock: Clock

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"cs-prop:{uuid.uuid4().hex[:8]}:"
        self.state = State(
            self.backend,
            prefix=self.prefix,
            limits=TIER_LIMITS,
            admission_ttl=TTL_MS / 1000,
            lease_ttl=60,
        )
        self.model = Model()
        self.clock.ms = Clock.START  # every example starts at the same instant: reproducible

    @property
    def now(self) -> int:
        return self.clock.ms

    def keys(self, tier: str, user: str) -> tuple[Key, Key]:
        return ("tier", tier), ("user", tier, user)

    # Rules -------------------------------------------------------------------------------------
    @rule(jobs=st.lists(JOB, min_size=1, max_size=5))
    def admit(self, jobs: list[tuple[str, str, str]]) -> None:
        self.admit_each(jobs)

    @rule(tier=st.sampled_from(sorted(TIER_LIMITS)), user=st.sampled_from(USERS))
    def admit_every_job_of_a_user(self, tier: str, user: str) -> None:
        self.admit_each([job for job in JOBS if job[1:] == (tier, user)])

    def admit_each(self, jobs: list[tuple[str, str, str]]) -> None:
        for job_id, tier, user in jobs:
            tier_max, user_max = TIER_LIMITS[tier]
            tier_key, user_key = self.keys(tier, user)
            self.model.prune(tier_key, self.now)
            self.model.prune(user_key, self.now)
            in_tier, in_user = self.model.zset(tier_key), self.model.zset(user_key)
            if job_id in in_tier:
                expected = "ok"  # admitting a job twice takes one slot
            elif len(in_tier) >= tier_max:
                expected = "backpressure"
            elif len(in_user) >= user_max:
                expected = "user_concurrency"
            else:
                expected = "ok"
                in_tier[job_id] = in_user[job_id] = self.now + TTL_MS
                self.model.late.discard(job_id)
            try:
                self.state.admit(job_id, tier, user)
                outcome = "ok"
            except RateLimitError as refused:
                outcome = refused.code
                assert refused.retry_after and refused.retry_after >= 1
            assert outcome == expected, (job_id, outcome, expected)

    @rule(job=JOB, slots=st.booleans(), own_token=st.booleans())
    def release(self, job: tuple[str, str, str], slots: bool, own_token: bool) -> None:
        job_id, tier, user = job
        holder = self.model.leases.get(job_id, "")
        token = holder if own_token else "not-the-holder"
        self.state.release(job_id, tier, user, token, slots=slots)
        if holder and token == holder:
            del self.model.leases[job_id]
        if slots:
            for key in self.keys(tier, user):
                self.model.zset(key).pop(job_id, None)
            self.model.late.discard(job_id)
            assert job_id not in self.redis_live(tier) | self.redis_live(tier, user)
        leased = self.backend.command("GET", self.state.keys.lease(job_id))
        assert leased == self.model.leases.get(job_id)

    @rule(job=JOB)
    def acquire(self, job: tuple[str, str, str]) -> None:
        job_id, tier, user = job
        token = uuid.uuid4().hex
        outcome, detail = self.state.acquire(job_id, tier, user, token)
        if job_id in self.model.done:
            assert (outcome, detail) == ("done", "succeeded")
        elif job_id in self.model.leases:
            assert outcome == "busy" and int(detail) > 0
        else:
            assert outcome == "acquired"
            if job_id not in self.model.live(("tier", tier), self.now):
                self.model.late.add(job_id)
            self.model.leases[job_id] = token
            for key in self.keys(tier, user):
                self.model.zset(key)[job_id] = self.now + TTL_MS

    @rule(job=JOB, own_token=st.booleans())
    def renew(self, job: tuple[str, str, str], own_token: bool) -> None:
        job_id, tier, user = job
        holder = self.model.leases.get(job_id, "")
        token = holder if own_token else "not-the-holder"
        held, done, _ = renew(self.state, job_id, tier, user, token)
        assert held is bool(holder and token == holder)
        assert done == ("succeeded" if job_id in self.model.done else None)
        if held:
            for key in self.keys(tier, user):
                members = self.model.zset(key)
                if job_id in members:  # ZADD XX: renews a member, never adds one
                    members[job_id] = self.now + TTL_MS

    @rule(job=JOB)
    def finish(self, job: tuple[str, str, str]) -> None:
        job_id = job[0]
        last_id = self.state.emit(
            job_id,
            [("status", {"status": "succeeded", "job_id": job_id})],
            terminal="succeeded",
        )
        assert (last_id is None) == (job_id in self.model.done)
        self.model.done.add(job_id)

    @rule(job=JOB)
    def lease_lapses(self, job: tuple[str, str, str]) -> None:
        # What LEASE_TTL does to a crashed attempt's lease, without waiting for it.
        self.backend.command("DEL", self.state.keys.lease(job[0]))
        self.model.leases.pop(job[0], None)

    @rule(ms=st.sampled_from([1, TTL_MS // 2, TTL_MS - 1, TTL_MS]))
    def time_passes(self, ms: int) -> None:
        self.clock.ms += ms

    @rule(tier=st.sampled_from(sorted(TIER_LIMITS)), user=st.sampled_from(USERS))
    def count_live(self, tier: str, user: str) -> None:
        tier_key, user_key = self.keys(tier, user)
        self.model.prune(tier_key, self.now)
        self.model.prune(user_key, self.now)
        assert self.state.live(tier) == len(self.model.zset(tier_key))
        assert live_for_user(self.state, user, tier) == len(self.model.zset(user_key))

    @precondition(lambda self: any(self.model.sets.values()))
    @rule()
    def every_admission_lapses(self) -> None:
        self.clock.ms += TTL_MS
        for tier in TIER_LIMITS:
            assert self.state.live(tier) == 0
            for user in USERS:
                assert live_for_user(self.state, user, tier) == 0
        self.model.sets.clear()

    # Invariants --------------------------------------------------------------------------------
    def redis_live(self, tier: str, user: str | None = None) -> set[str]:
        """The set's unexpired members, read without pruning anything."""
        key = self.state.keys.tier(tier) if user is None else self.state.keys.user(user, tier)
        return set(self.backend.command("ZRANGEBYSCORE", key, f"({self.now}", "+inf"))

    @invariant()
    def redis_holds_the_models_live_jobs_and_no_set_is_over_its_limit(self) -> None:
        late = self.model.late
        for tier, (tier_max, user_max) in TIER_LIMITS.items():
            live = self.redis_live(tier)
            assert live == self.model.live(("tier", tier), self.now)
            assert len(live - late) <= tier_max, (tier, live)
            for user in USERS:
                mine = self.redis_live(tier, user)
                assert mine == self.model.live(("user", tier, user), self.now)
                assert len(mine - late) <= user_max, (tier, user, mine)

    def teardown(self) -> None:
        keys = list(self.backend._client.scan_iter(match=f"{self.prefix}*", count=500))
        if keys:
            self.backend.command("DEL", *keys)


@pytest.fixture
def redis(redis_url: str) -> Iterator[TcpBackend]:
    backend = TcpBackend(redis_url)
    yield backend
    backend.close()


def run_admission_machine(
    redis: TcpBackend, monkeypatch: pytest.MonkeyPatch, machine: type[AdmissionMachine]
) -> None:
    clock = Clock()
    monkeypatch.setattr(lib.state, "_now_ms", clock)
    bound = type(machine.__name__, (machine,), {"backend": redis, "clock": clock})
    run_state_machine_as_test(
        bound,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_admission_never_overfills_a_tier_or_a_user_and_frees_released_slots(
    redis: TcpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_admission_machine(redis, monkeypatch, AdmissionMachine)
