"""lib/state/waits.py: detached mode's model slots and ordered waits, on the real Redis."""

from __future__ import annotations

import time

from lib.state import State, Take

MODEL = "openai:offline"


def _take(state: State, job: str, order: float, gen: int | None = None, limit: int = 1) -> Take:
    return state.take_slot(
        job,
        "paid",
        MODEL,
        limit=limit,
        order=order,
        generation=gen,
        wait_seconds=5,
        user_id=f"user-{job}",
    ).outcome


def test_a_full_model_queues_jobs_in_submit_order_whatever_order_they_arrive_in(
    state: State,
) -> None:
    assert _take(state, "a", 1) == Take.OK
    assert _take(state, "c", 3) == Take.WAIT
    assert _take(state, "b", 2) == Take.WAIT

    assert state.queue_position("b", "paid", MODEL) == (1, 0)
    assert state.queue_position("c", "paid", MODEL) == (2, 1)
    assert state.queue_position("a", "paid", MODEL) == (0, 0)
    assert state.job_waits("c", "paid", MODEL) == 1
    assert state.wait_counts() == {f"paid:{MODEL}": 2}


def test_a_freed_slot_goes_to_the_head_waiter_and_not_to_a_later_one(state: State) -> None:
    _take(state, "a", 1)
    _take(state, "b", 2)
    _take(state, "c", 3)
    gen_b = state.take_slot(
        "b", "paid", MODEL, limit=1, order=2, generation=None, wait_seconds=5, user_id="user-b"
    ).generation

    woken = state.release_slot("a", "paid", MODEL, limit=1, ended=True)

    assert woken == [("b", gen_b, "user-b")]
    assert _take(state, "c", 3) == Take.WAIT  # not at the head: the slot is b's
    assert _take(state, "b", 2, gen=gen_b) == Take.OK
    assert state.queue_position("c", "paid", MODEL) == (1, 0)
    assert state.slots_held("paid", MODEL) == 1


def test_a_message_with_an_older_generation_is_stale_and_changes_nothing(state: State) -> None:
    _take(state, "a", 1)
    first = state.take_slot("b", "paid", MODEL, limit=1, order=2, generation=None, wait_seconds=5)
    second = state.take_slot(
        "b", "paid", MODEL, limit=1, order=2, generation=first.generation, wait_seconds=5
    )

    stale = state.take_slot(
        "b", "paid", MODEL, limit=1, order=2, generation=first.generation, wait_seconds=5
    )

    assert second.outcome == Take.WAIT and second.generation == first.generation + 1
    assert stale.outcome == Take.STALE and stale.generation == second.generation
    assert state.job_waits("b", "paid", MODEL) == 2


def test_the_slot_of_a_dead_holder_lapses_with_its_lease(state: State) -> None:
    short = State(state.backend, prefix=state.keys.prefix, lease_ttl=0.2)
    assert _take(short, "dead", 1) == Take.OK
    assert _take(short, "next", 2) == Take.WAIT

    time.sleep(0.3)

    assert _take(short, "next", 2, gen=1) == Take.OK
    assert short.slots_held("paid", MODEL) == 1


def test_a_renewed_holder_keeps_its_slot_past_the_lease_ttl(state: State) -> None:
    # Renewed at 0.4 of the TTL: a loaded machine can stretch a sleep a lot before a renewal
    # comes too late (0.15 s renewals of a 0.3 s TTL could).
    ttl = 1.0
    short = State(state.backend, prefix=state.keys.prefix, lease_ttl=ttl)
    began = time.monotonic()
    assert _take(short, "alive", 1) == Take.OK
    for _ in range(4):
        time.sleep(0.4 * ttl)
        short.renew_slots([("alive", "paid", MODEL)])

    assert time.monotonic() - began > ttl  # the slot would have lapsed without the renewals
    assert _take(short, "other", 2) == Take.WAIT


def test_a_waiter_that_stops_polling_leaves_the_queue(state: State) -> None:
    _take(state, "a", 1)
    state.take_slot("gone", "paid", MODEL, limit=1, order=2, generation=None, wait_seconds=0.05)
    assert state.waiting("gone", "paid", MODEL)

    time.sleep(0.2)
    state.release_slot("a", "paid", MODEL, limit=1, ended=True)

    assert not state.waiting("gone", "paid", MODEL)
    assert _take(state, "late", 3) == Take.OK
    assert state.queue_position("gone", "paid", MODEL) == (0, 0)
