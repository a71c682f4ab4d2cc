"""lib/state/waits.py: detached mode's model slots and ordered waits, on the real Redis."""

from __future__ import annotations

import time

from lib.state import State, Take

MODEL = "openai:offline"


def _take(state: State, job: str, gen: int | None = None, limit: int = 1) -> Take:
    return state.take_slot(
        job,
        "paid",
        MODEL,
        limit=limit,
        generation=gen,
        wait_seconds=5,
        user_id=f"user-{job}",
    ).outcome


def test_a_full_model_queues_jobs_in_the_order_they_arrive(state: State) -> None:
    assert _take(state, "a") == Take.OK
    assert _take(state, "c") == Take.WAIT
    assert _take(state, "b") == Take.WAIT

    assert state.queue_position("c", "paid", MODEL) == (1, 0)
    assert state.queue_position("b", "paid", MODEL) == (2, 1)
    assert state.queue_position("a", "paid", MODEL) == (0, 0)
    assert state.job_waits("c", "paid", MODEL) == 1
    assert state.wait_counts() == {f"paid:{MODEL}": 2}


def test_a_waiters_position_never_goes_up_when_an_earlier_submitted_job_arrives_later(
    state: State,
) -> None:
    # c was submitted after b but its delivery came first; b's comes later, then b and c poll
    # again (their wait messages), and a newcomer from a box whose clock is ahead joins too.
    assert _take(state, "a") == Take.OK
    c = state.take_slot("c", "paid", MODEL, limit=1, generation=None, wait_seconds=5)
    positions = [state.queue_position("c", "paid", MODEL)[0]]
    b = state.take_slot("b", "paid", MODEL, limit=1, generation=None, wait_seconds=5)
    positions.append(state.queue_position("c", "paid", MODEL)[0])
    state.take_slot("c", "paid", MODEL, limit=1, generation=c.generation, wait_seconds=5)
    state.take_slot("b", "paid", MODEL, limit=1, generation=b.generation, wait_seconds=5)
    positions.append(state.queue_position("c", "paid", MODEL)[0])
    state.backend.command(
        "ZADD", state.keys.model_queue("paid", MODEL), time.time() * 1000 + 60_000, "skewed"
    )
    assert _take(state, "d") == Take.WAIT
    positions.append(state.queue_position("c", "paid", MODEL)[0])

    assert positions == [1, 1, 1, 1]
    assert state.queue_position("b", "paid", MODEL) == (2, 1)
    assert state.queue_position("d", "paid", MODEL) == (4, 3)  # behind the skewed one too


def test_a_freed_slot_goes_to_the_head_waiter_and_not_to_a_later_one(state: State) -> None:
    _take(state, "a")
    _take(state, "b")
    _take(state, "c")
    gen_b = state.take_slot(
        "b", "paid", MODEL, limit=1, generation=None, wait_seconds=5, user_id="user-b"
    ).generation

    woken = state.release_slot("a", "paid", MODEL, limit=1, ended=True)

    assert woken == [("b", gen_b, "user-b")]
    assert _take(state, "c") == Take.WAIT  # not at the head: the slot is b's
    assert _take(state, "b", gen=gen_b) == Take.OK
    assert state.queue_position("c", "paid", MODEL) == (1, 0)
    assert state.slots_held("paid", MODEL) == 1


def test_a_message_with_an_older_generation_is_stale_and_changes_nothing(state: State) -> None:
    _take(state, "a")
    first = state.take_slot("b", "paid", MODEL, limit=1, generation=None, wait_seconds=5)
    second = state.take_slot(
        "b", "paid", MODEL, limit=1, generation=first.generation, wait_seconds=5
    )

    stale = state.take_slot(
        "b", "paid", MODEL, limit=1, generation=first.generation, wait_seconds=5
    )

    assert second.outcome == Take.WAIT and second.generation == first.generation + 1
    assert stale.outcome == Take.STALE and stale.generation == second.generation
    assert state.job_waits("b", "paid", MODEL) == 2


def test_the_slot_of_a_dead_holder_lapses_with_its_lease(state: State) -> None:
    short = State(state.backend, prefix=state.keys.prefix, lease_ttl=0.2)
    assert _take(short, "dead") == Take.OK
    assert _take(short, "next") == Take.WAIT

    time.sleep(0.3)

    assert _take(short, "next", gen=1) == Take.OK
    assert short.slots_held("paid", MODEL) == 1


def test_a_renewed_holder_keeps_its_slot_past_the_lease_ttl(state: State) -> None:
    # Renewed at 0.4 of the TTL: a loaded machine can stretch a sleep a lot before a renewal
    # comes too late (0.15 s renewals of a 0.3 s TTL could).
    ttl = 1.0
    short = State(state.backend, prefix=state.keys.prefix, lease_ttl=ttl)
    began = time.monotonic()
    assert _take(short, "alive") == Take.OK
    for _ in range(4):
        time.sleep(0.4 * ttl)
        short.renew_slots([("alive", "paid", MODEL)])

    assert time.monotonic() - began > ttl  # the slot would have lapsed without the renewals
    assert _take(short, "other") == Take.WAIT


def test_a_waiter_that_stops_polling_leaves_the_queue(state: State) -> None:
    _take(state, "a")
    state.take_slot("gone", "paid", MODEL, limit=1, generation=None, wait_seconds=0.05)
    assert state.waiting("gone", "paid", MODEL)

    time.sleep(0.2)
    state.release_slot("a", "paid", MODEL, limit=1, ended=True)

    assert not state.waiting("gone", "paid", MODEL)
    assert _take(state, "late") == Take.OK
    assert state.queue_position("gone", "paid", MODEL) == (0, 0)
