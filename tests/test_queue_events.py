"""Live queue position and ETA end to end (lib/queue_notify.py, lib/state/queue_view.py): a burst
on a detached worker whose model takes one job at a time; each waiting job's `queue` events, in
its own event stream, and its `queue` field in GET /api/jobs/<id>."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from helpers.net import wait_for

from lib.service import Producer

if TYPE_CHECKING:
    from helpers.detached import DetachedEnv
    from helpers.worker import Created, Db

SLOW = "[[llm:slow=6]]"


def _queue_then_running(events: list) -> tuple[list[dict], int]:
    """The job's `queue` events before its first `running`, and that running's index."""
    running = next(
        i for i, e in enumerate(events) if e.type == "status" and e.data["status"] == "running"
    )
    return [e.data for e in events[:running] if e.type == "queue"], running


def test_a_bursts_queue_events_count_down_in_order_to_zero_before_running(
    make_detached: Callable[..., DetachedEnv], db: Db
) -> None:
    # time_scale 1 and a 30 s wait: only the events of starts and ends move the line in time.
    d = make_detached(time_scale=1.0, llm_max_concurrency_paid=1, detached_wait_seconds=30)
    jobs: list[Created] = [d.env.create_job(SLOW) for _ in range(4)]
    model = d.env.settings.model_for("paid", "job_match")
    reader = Producer(d.env.settings, d.env.store, d.env.state, None, None)  # type: ignore[arg-type]

    d.submit(jobs[0])
    wait_for(lambda: db.job(jobs[0].job_id)["status"] == "running", what="the first job running")
    for job in jobs[1:]:
        d.submit(job)
    wait_for(
        lambda: d.env.state.queue_position(jobs[3].job_id, "paid", model) == (3, 2),
        what="the last job third in line",
    )
    # GET /api/jobs/<id> of a waiting job carries where it stands (once the worker wrote its
    # view, just after the job joined the line); a running one does not.
    wait_for(
        lambda: "queue" in reader.get(jobs[3].job_id, jobs[3].user_id).public(),
        what="the last job's queue field",
    )
    view = reader.get(jobs[3].job_id, jobs[3].user_id).public()["queue"]
    assert view["position"] == 3 and view["ahead"] == 2 and view["eta_s"] > 0
    assert "queue" not in reader.get(jobs[0].job_id, jobs[0].user_id).public()
    for job in jobs:
        wait_for(
            lambda job=job: db.job(job.job_id)["status"] in ("succeeded", "failed"),
            60,
            what="every job done",
        )
    assert "queue" not in reader.get(jobs[3].job_id, jobs[3].user_id).public()

    first_etas = []
    for i, job in enumerate(jobs[1:], start=1):
        events = d.env.stream(job.job_id)
        views, _ = _queue_then_running(events)
        assert views, f"job {i} got no queue event"
        positions = [v["position"] for v in views]
        # In order, counting down, ending at 0 (the job left the line) before `running`.
        assert positions[0] == i and positions[-1] == 0
        assert positions == sorted(positions, reverse=True)
        assert all(v["ahead"] == max(0, v["position"] - 1) for v in views)
        assert all(v["job_id"] == job.job_id and v["eta_s"] >= 0 for v in views)
        # Each value is sent once: consecutive events differ.
        pairs = zip(views, views[1:], strict=False)
        assert all((a["position"], a["eta_s"]) != (b["position"], b["eta_s"]) for a, b in pairs)
        first_etas.append(views[0]["eta_s"])
    # Further back in line, a later expected start.
    assert first_etas == sorted(first_etas) and first_etas[0] < first_etas[-1]
    # Service times were measured for the kind.
    assert d.env.state.service_times("paid", model)["job_match"] > 0
