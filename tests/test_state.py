"""The Redis state contract: admission, leases, keys and renewals, and when a refused admission
expects its next slot. Every test runs on both adapters (TCP and Upstash REST): the `state`
fixture is fixtures/contract_suites.py's. Event streams are test_state_streams.py.
"""

from __future__ import annotations

import time

import pytest
from fixtures import contract_suites
from helpers.backends import live_for_user, new_id, renew
from helpers.net import wait_for

import lib.state as lib_state
from lib.errors import RateLimitError
from lib.events import JobEvents, emit_terminal
from lib.state import State

state = contract_suites.state  # each adapter in turn


def test_admission_enforces_the_per_user_limit_with_retry_after(state: State) -> None:
    user = new_id()
    state.admit(new_id(), "free", user)
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "free", user)
    assert caught.value.code == "user_concurrency"
    assert caught.value.retry_after and caught.value.retry_after > 0


def test_admission_enforces_the_tier_limit_as_backpressure(state: State) -> None:
    state.admit(new_id(), "free", new_id())
    state.admit(new_id(), "free", new_id())
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "free", new_id())
    assert caught.value.code == "backpressure"
    assert state.live("free") == 2


def test_admitting_the_same_job_twice_takes_one_slot(state: State) -> None:
    job, user = new_id(), new_id()
    state.admit(job, "paid", user)
    state.admit(job, "paid", user)
    assert state.live("paid") == 1


def test_release_frees_both_slots_and_is_idempotent(state: State) -> None:
    job, user = new_id(), new_id()
    state.admit(job, "free", user)
    state.release(job, "free", user)
    state.release(job, "free", user)
    assert state.live("free") == 0
    assert live_for_user(state, user, "free") == 0
    state.admit(new_id(), "free", user)


def test_a_crashed_jobs_slot_frees_itself_when_its_deadline_passes(
    redis_backend: object, redis_prefix: str
) -> None:
    short = State(
        redis_backend,
        prefix=redis_prefix,  # type: ignore[arg-type]
        limits={"free": (1, 1), "paid": (1, 1)},
        admission_ttl=0.3,
    )
    user = new_id()
    short.admit(new_id(), "free", user)
    with pytest.raises(RateLimitError):
        short.admit(new_id(), "free", user)

    def admitted() -> bool:
        try:
            short.admit(new_id(), "free", user)
        except RateLimitError:
            return False
        return True

    wait_for(admitted, timeout=5, what="the expired slot to free itself")
    assert short.live("free") == 1


def test_a_second_attempt_cannot_take_a_held_lease(state: State) -> None:
    job, user = new_id(), new_id()
    assert state.acquire(job, "free", user, "a") == ("acquired", None)
    status, pttl = state.acquire(job, "free", user, "b")
    assert status == "busy" and 0 < int(pttl) <= 5000
    state.release(job, "free", user, "a", slots=False)
    assert state.acquire(job, "free", user, "b")[0] == "acquired"


def test_renew_reports_a_lost_lease_and_a_closed_stream(state: State) -> None:
    job, user = new_id(), new_id()
    state.acquire(job, "free", user, "a")
    assert renew(state, job, "free", user, "a") == (True, None, None)
    assert renew(state, job, "free", user, "other") == (False, None, None)
    emit_terminal(state, job, "cancelled", result=None, error=None, attempt=1)
    assert renew(state, job, "free", user, "a") == (True, "cancelled", None)


def test_a_closed_stream_refuses_the_lease(state: State) -> None:
    job = new_id()
    emit_terminal(state, job, "succeeded", result={"x": 1}, error=None, attempt=1)
    assert state.acquire(job, "free", new_id(), "a") == ("done", "succeeded")


def test_every_per_job_key_has_a_ttl(state: State) -> None:
    job, user = new_id(), new_id()
    state.admit(job, "free", user)
    state.acquire(job, "free", user, "a")
    JobEvents(state, job, 1).running()
    emit_terminal(state, job, "succeeded", result={}, error=None, attempt=1)
    for key in (
        state.keys.events(job),
        state.keys.done(job),
        state.keys.lease(job),
        state.keys.user(user, "free"),
    ):
        assert int(state.backend.command("TTL", key)) > 0, key


def test_every_key_carries_the_prefix(state: State, redis_url: str) -> None:
    import redis

    job, user = new_id(), new_id()
    state.admit(job, "free", user)
    JobEvents(state, job, 1).running()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    mine = [k for k in client.scan_iter(match="*") if job in k or user in k]
    assert mine and all(k.startswith(state.keys.prefix) for k in mine)


def test_renew_many_renews_every_lease_in_one_call_and_reports_each(state: State) -> None:
    a, b, user = new_id(), new_id(), new_id()
    state.acquire(a, "paid", user, "ta")
    state.acquire(b, "paid", user, "tb")
    emit_terminal(state, b, "cancelled", result=None, error=None, attempt=1)
    state.watch(a, "rest")
    answers = state.renew_many([(a, "paid", user, "ta", True), (b, "paid", user, "wrong", True)])
    assert answers == [(True, None, "rest"), (False, "cancelled", None)]
    assert state.lease_ms(a) > 0


def test_a_round_of_renewals_is_one_evalsha_each_even_after_the_scripts_were_flushed(
    redis_url: str, redis_prefix: str
) -> None:
    import redis

    from lib.state.tcp import TcpBackend

    state = State(TcpBackend(redis_url), prefix=redis_prefix, lease_ttl=5)
    direct = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        user, jobs = new_id(), [new_id() for _ in range(3)]
        for job in jobs:
            state.acquire(job, "paid", user, f"t-{job}")
        direct.script_flush()  # a restarted Redis forgets its scripts
        leases = [(job, "paid", user, f"t-{job}", False) for job in jobs]
        assert state.renew_many(leases) == [(True, None, None)] * 3  # loaded, then re-sent
        before = {k: v["calls"] for k, v in direct.info("commandstats").items()}
        assert state.renew_many(leases) == [(True, None, None)] * 3
        after = {k: v["calls"] for k, v in direct.info("commandstats").items()}
        used = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        used.pop("cmdstat_info", None)
        # Per lease: EVALSHA, MGET and PEXPIRE; no SCRIPT EXISTS for the round.
        assert used == {"cmdstat_evalsha": 3, "cmdstat_mget": 3, "cmdstat_pexpire": 3}
    finally:
        direct.close()
        state.close()


# Refused admissions say when the next slot is expected ---------------------------------------


def test_a_refusal_before_any_job_has_ended_expects_a_slot_after_retry_after_seconds(
    state: State,
) -> None:
    state.backend.command("DEL", state.keys.service_samples("free"))
    user = new_id()
    state.admit(new_id(), "free", user)
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "free", user)
    details = caught.value.details
    assert details["next_slot_s"] == caught.value.retry_after == state.retry_after
    assert details["service_s"] is None
    assert (details["active"], details["limit"]) == (1, 1)
    assert details["reason"] == "1 of your free jobs are active, the limit is 1"


def test_a_refusal_expects_the_oldest_live_job_to_end_after_the_mean_service_time(
    state: State,
) -> None:
    state.backend.command("DEL", state.keys.service_samples("paid"))
    for seconds in (20.0, 40.0):  # two jobs that succeeded: a mean service time of 30 s
        job, owner = new_id(), new_id()
        state.admit(job, "paid", owner)
        state.release(job, "paid", owner, served=("job_match", seconds))
    user = new_id()
    state.admit(new_id(), "paid", user)
    state.admit(new_id(), "paid", user)
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "paid", user)
    assert caught.value.code == "user_concurrency"
    details = caught.value.details
    assert details["service_s"] == 30.0
    # The oldest of the user's jobs started just now: it has about 30 s left.
    assert 28 <= details["next_slot_s"] <= 30
    assert caught.value.retry_after == details["next_slot_s"]


def test_a_full_tier_expects_its_first_started_job_to_end_first(state: State) -> None:
    samples = state.keys.service_samples("free")
    state.backend.command("DEL", samples)
    state.release(new_id(), "free", new_id(), served=("interview_prep", 100.0))
    # A member started 40 s ago (its score is its start plus the admission TTL), another now.
    now_ms = int(time.time() * 1000)
    state.backend.command(
        "ZADD", state.keys.tier("free"), now_ms - 40_000 + state.admission_ttl_ms, new_id()
    )
    state.admit(new_id(), "free", new_id())
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "free", new_id())
    details = caught.value.details
    assert caught.value.code == "backpressure"
    assert (details["active"], details["limit"]) == (2, 2)
    assert 59 <= details["next_slot_s"] <= 61
    assert caught.value.retry_after == details["next_slot_s"]
    assert "the free queue is full" in details["reason"]


def test_an_overdue_job_makes_the_next_slot_expected_within_a_second(state: State) -> None:
    state.backend.command("DEL", state.keys.service_samples("free"))
    state.release(new_id(), "free", new_id(), served=("job_match", 5.0))
    user = new_id()
    now_ms = int(time.time() * 1000)
    state.backend.command(  # a job of this user that has run for 50 s: overdue
        "ZADD", state.keys.user(user, "free"), now_ms - 50_000 + state.admission_ttl_ms, new_id()
    )
    with pytest.raises(RateLimitError) as caught:
        state.admit(new_id(), "free", user)
    assert caught.value.details["next_slot_s"] == caught.value.retry_after == 1


def test_release_keeps_only_the_latest_service_samples(state: State) -> None:
    samples = state.keys.service_samples("paid")
    state.backend.command("DEL", samples)
    for n in range(lib_state.SERVICE_SAMPLES + 5):
        state.release(new_id(), "paid", new_id(), served=("job_match", float(n)))
    assert state.backend.command("XLEN", samples) == lib_state.SERVICE_SAMPLES
