"""lib/state/queue_view.py: the live queue view (position, ahead, ETA from measured service
times) of detached mode's model queues, on the real Redis."""

from __future__ import annotations

import json

from lib.state import QueueView, State, Take
from lib.state.queue_view import DEFAULT_SERVICE_MS, QueueUpdate

MODEL = "openai:offline"


def _take(state: State, job: str, limit: int = 1) -> Take:
    return state.take_slot(
        job,
        "paid",
        MODEL,
        limit=limit,
        generation=None,
        wait_seconds=5,
        user_id=f"user-{job}",
    ).outcome


def _update(state: State, op: str, job: str, kind: str = "k", limit: int = 1):
    return state.queue_update("paid", MODEL, limit=limit, op=op, job_id=job, kind=kind)


def _set_service(state: State, kind: str, ms: int) -> None:
    state.backend.command("HSET", state.keys.service_times("paid", MODEL), kind, ms)


def test_waiters_get_their_position_ahead_and_an_eta_from_the_service_time(state: State) -> None:
    _set_service(state, "k", 10_000)
    assert _take(state, "a") == Take.OK
    _update(state, "start", "a")
    for job in ["b", "c", "d"]:
        assert _take(state, job) == Take.WAIT
        _update(state, "wait", job)

    # a started just now: b starts in ~10 s, c ~10 s later, d ~10 s after that.
    b = state.queue_view("b", "paid", MODEL)
    c = state.queue_view("c", "paid", MODEL)
    d = state.queue_view("d", "paid", MODEL)
    assert (b.position, b.ahead) == (1, 0) and 9 <= b.eta_s <= 10
    assert (c.position, c.ahead) == (2, 1) and 19 <= c.eta_s <= 20
    assert (d.position, d.ahead) == (3, 2) and 29 <= d.eta_s <= 30
    assert state.queue_view("a", "paid", MODEL) is None  # it runs


def test_only_changed_views_come_back_and_a_start_after_waiting_gets_a_last_zero(
    state: State,
) -> None:
    _set_service(state, "k", 10_000)
    _take(state, "a")
    _update(state, "start", "a")
    _take(state, "b")
    first = _update(state, "wait", "b")
    assert [job for job, _ in first.views] == ["b"]
    # Nothing changed (the ETA only counts down): nothing to send.
    assert _update(state, "", "").views == []

    state.release_slot("a", "paid", MODEL, limit=1, ended=True)
    _update(state, "end", "a")
    assert _take(state, "b") == Take.OK
    started = _update(state, "start", "b")

    assert started.views == [("b", QueueView(0, 0, 0))]
    assert started.version > first.version
    assert state.queue_view("b", "paid", MODEL) is None


def test_an_ended_job_moves_its_kinds_moving_average_and_others_keep_theirs(
    state: State,
) -> None:
    _set_service(state, "slow", 20_000)
    _take(state, "a")
    _update(state, "start", "a", kind="fast")
    state.release_slot("a", "paid", MODEL, limit=1, ended=True)
    _update(state, "end", "a")

    times = state.service_times("paid", MODEL)
    assert times["slow"] == 20_000
    assert 0 <= times["fast"] < 1_000  # the first sample is the average


def test_without_samples_the_default_service_time_is_assumed(state: State) -> None:
    for job in ["a", "b"]:
        _take(state, job, limit=1)
    _update(state, "start", "a")
    _update(state, "wait", "b")

    view = state.queue_view("b", "paid", MODEL)
    assert view is not None and abs(view.eta_s - DEFAULT_SERVICE_MS / 1000) <= 1


def test_two_slots_share_the_line(state: State) -> None:
    _set_service(state, "k", 10_000)
    for job in ["a", "b", "c", "d", "e"]:
        _take(state, job, limit=2)
    _update(state, "start", "a", limit=2)
    _update(state, "start", "b", limit=2)
    _update(state, "wait", "c", limit=2)

    etas = [state.queue_view(j, "paid", MODEL).eta_s for j in ("c", "d", "e")]
    # c and d take the two slots when a and b end (~10 s); e waits for one of those (~20 s).
    assert 9 <= etas[0] <= 10 and 9 <= etas[1] <= 10 and 19 <= etas[2] <= 20


def test_queue_events_land_in_each_waiters_stream_and_a_closed_stream_takes_none(
    state: State,
) -> None:
    state.emit("w1", [("status", {"status": "queued"})])
    state.emit("w2", [("status", {"status": "cancelled"})], terminal="cancelled")

    state.emit_queue(QueueUpdate(5, [("w1", QueueView(2, 1, 40)), ("w2", QueueView(3, 2, 60))]))
    # An earlier run's view arriving late (another thread's pipeline) is dropped.
    state.emit_queue(QueueUpdate(4, [("w1", QueueView(3, 2, 70))]))

    w1 = state.read("w1")
    assert w1[-1][1]["t"] == "queue"
    assert json.loads(w1[-1][1]["d"])["position"] == 2
    assert json.loads(w1[-1][1]["d"])["eta_s"] == 40
    assert [e[1]["t"] for e in state.read("w2")] == ["status"]


def test_the_view_its_events_and_its_read_work_on_both_adapters(
    redis_backend: object, redis_prefix: str
) -> None:
    state = State(redis_backend, prefix=redis_prefix)  # type: ignore[arg-type]
    _set_service(state, "k", 10_000)
    state.emit("b", [("status", {"status": "queued"})], refresh_ttl=True)
    _take(state, "a")
    _update(state, "start", "a")
    _take(state, "b")

    state.emit_queue(_update(state, "wait", "b"))

    view = state.queue_view("b", "paid", MODEL)
    assert view is not None and (view.position, view.ahead) == (1, 0) and 9 <= view.eta_s <= 10
    last = state.read("b")[-1][1]
    assert last["t"] == "queue" and json.loads(last["d"])["position"] == 1
