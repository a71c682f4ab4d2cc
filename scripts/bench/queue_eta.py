"""8. Live queue position and ETA (detached mode): how right the ETA is, and what an update costs.

Accuracy: a `make dev` stack in EXECUTION_MODE=detached whose paid model runs 2 jobs at a time.
A warm-up of a few jobs, 2 at a time (none waits), gives the moving average of service times
its first samples (a live system always has them); then a burst of `jobs` jobs of varying
length (the offline LLM at 25-40 ms per token, quick 10-16, drawn with a fixed seed) overfills
the model. For each job that
waited, the ETA of its first `queue` event (sent as it joined the line, at submit) is compared
with its real wait, from that event to its `running` status: |eta - wait| / wait, p50 and p90.

Messages: the QStash messages per job of the burst (the dev broker's log: publishes to the
worker, other publishes, delivery attempts), detached against the same burst inline, run at the
same time on a stack of its own: detached, a job that finds its model full is re-published
after DETACHED_WAIT_SECONDS, and woken by one more message when a slot frees; inline, QStash's
flow control (parallelism 2) holds its delivery, which costs nothing more.

Cost: on the same Redis, one update (the QUEUE_VIEW script, then one pipeline of `queue` events)
over a line of W waiters behind 2 holders where every waiter's view changes (a job ended): its
Redis commands (INFO commandstats, Lua internals included) and its round trips (2).

    .venv/bin/python -m scripts.bench.queue_eta [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from lib.state import State
from lib.state.tcp import TcpBackend
from scripts.bench.common import (
    OUT,
    Bench,
    BrokerLog,
    body,
    command_delta,
    commandstats,
    dist,
    new_user,
    say,
    start_all,
)
from scripts.bench.live_jobs import messages_per_job
from scripts.stack import embedded
from scripts.stack.devstack import ROOT

SLOTS = 2
OVERRIDES = {
    "EXECUTION_MODE": "detached",
    "LLM_MAX_CONCURRENCY_PAID": str(SLOTS),
    "WORKER_MAX_JOBS": "64",
    "DETACHED_WAIT_SECONDS": "60",
    "RECONCILE_CRON": "",
    # Delays in real time: the dev stack's broker shortens them 20-fold by default, which made
    # every waiter poll again every 3 s (20.5 QStash messages per job at 04:00 UTC, 3.33 since;
    # the `queue` events per waiting job stayed about 21: they follow the line's moves).
    "DEV_BROKER_TIME_SCALE": "1",
}
INLINE_OVERRIDES = {**OVERRIDES, "EXECUTION_MODE": "inline"}


def _prefix(bench: Bench) -> str:
    """The bench's Redis prefix (common.Bench sets it from its name)."""
    return f"bench-{bench.name}:"


def _events(bench: Bench, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    raw = bench.redis().xrange(f"{_prefix(bench)}job:{{{job_id}}}:ev")
    return [(fields["t"], json.loads(fields["d"])) for _, fields in raw]


def _submit(client: httpx.Client, headers: dict[str, str], slow_ms: int) -> str:
    answer = client.post("/api/jobs", json=body(f"[[llm:slow={slow_ms}]]"), headers=headers)
    answer.raise_for_status()
    return str(answer.json()["job"]["id"])


def _wait_done(bench: Bench, ids: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = [_events(bench, i) for i in ids]
        if all(ev and ev[-1][0] == "status" and ev[-1][1]["status"] in TERMINAL for ev in ends):
            return True
        time.sleep(0.5)
    return False


TERMINAL = ("succeeded", "failed", "cancelled")


def _burst(
    bench: Bench, jobs: int, warmup: int, slow: tuple[int, int], seed: int
) -> tuple[list[str], dict[str, Any]]:
    """A warm-up, then a burst of `jobs` at once; the burst's ids once every one is terminal,
    and its QStash messages per job once the broker delivered all of them (the warm-up's are
    not counted; a wait's timer message comes up to DETACHED_WAIT_SECONDS after the job ran)."""
    rng = random.Random(seed)
    _, headers = new_user()
    with httpx.Client(base_url=bench.url, timeout=30) as client:
        # SLOTS at a time, so that no warm-up job waits (its timer message would come during
        # the burst and be counted with it).
        for first in range(0, warmup, SLOTS):
            warm = [
                _submit(client, headers, rng.randint(*slow))
                for _ in range(min(SLOTS, warmup - first))
            ]
            if not _wait_done(bench, warm, 120):
                raise RuntimeError("the warm-up jobs did not finish")
        broker = BrokerLog(bench).mark()
        ids = [_submit(client, headers, rng.randint(*slow)) for _ in range(jobs)]
    if not _wait_done(bench, ids, 60 + jobs * 10):
        raise RuntimeError("the burst did not finish")
    # The last wait's timer message, or a delivery answered busy and retried after the lease.
    settled = broker.settle(float(OVERRIDES["DETACHED_WAIT_SECONDS"]) + 90)
    return ids, {**messages_per_job(broker.counts(), len(ids)), "settled": settled}


def _per_waiting_job(messages: dict[str, Any], jobs: int, waited: int) -> float | None:
    """Delivery attempts per job that waited, counting 1 for each job that did not."""
    if not waited:
        return None
    return round((sum(messages["delivered"].values()) - (jobs - waited)) / waited, 2)


def inline_messages(
    bench: Bench, jobs: int, warmup: int, slow: tuple[int, int], seed: int = 7
) -> dict[str, Any]:
    """The same burst inline: QStash flow control (parallelism = the model's 2 slots) holds the
    deliveries that would overfill the model, so a wait costs no message."""
    _, messages = _burst(bench, jobs, warmup, slow, seed)
    return {"jobs": jobs, "qstash_messages_per_job": messages}


def accuracy(
    bench: Bench, jobs: int, warmup: int, slow: tuple[int, int], seed: int = 7
) -> dict[str, Any]:
    ids, messages = _burst(bench, jobs, warmup, slow, seed)
    errors, waits, events_per_job = [], [], []
    went_up = not_zero = 0
    for job_id in ids:
        evs = _events(bench, job_id)
        running = next(
            i for i, (t, d) in enumerate(evs) if t == "status" and d["status"] == "running"
        )
        views = [d for t, d in evs[:running] if t == "queue"]
        if not views:
            continue  # it took a slot at once
        positions = [v["position"] for v in views]
        # The line is in order of arrival (TAKE_SLOT): a position that goes up is a bug.
        went_up += positions != sorted(positions, reverse=True)
        not_zero += positions[-1] != 0
        events_per_job.append(len(views))
        wait = evs[running][1]["ts"] - views[0]["ts"]
        if wait < 1.0:
            continue  # it started within a second: a relative error means little
        waits.append(wait)
        errors.append(abs(views[0]["eta_s"] - wait) / wait)
    svc = {
        key.removeprefix(f"{_prefix(bench)}queue:"): bench.redis().hgetall(key)
        for key in bench.redis().keys(f"{_prefix(bench)}queue:*:svc")
    }
    return {
        "jobs": jobs,
        "slots": SLOTS,
        "warmup_jobs": warmup,
        "waited": len(events_per_job),
        "measured": len(errors),
        "wait_s": dist(waits),
        "eta_error_pct": dist(errors, 100),
        "queue_events_per_waiting_job": round(sum(events_per_job) / max(1, len(events_per_job)), 1),
        "jobs_whose_position_went_up": went_up,
        "jobs_whose_last_queue_event_was_not_0": not_zero,
        "service_ms_by_kind": svc,
        # Each wait is a delayed re-publish (`<job>-w<gen>`), and a freed slot wakes the head
        # waiters with one more (`-wake`); the superseded one is delivered and dropped (STALE).
        "qstash_messages_per_job": messages,
        "qstash_messages_per_waiting_job": _per_waiting_job(messages, jobs, len(events_per_job)),
    }


def update_cost(redis_url: str, waiters: int) -> dict[str, Any]:
    """Commands of one update over `waiters` waiters (all of them change)."""
    import redis as redis_py

    backend = TcpBackend(redis_url)
    state = State(backend, prefix=f"bench-cost-{waiters}:")
    client = redis_py.Redis.from_url(redis_url, decode_responses=True)
    model = "offline"
    backend.command("HSET", state.keys.service_times("paid", model), "job_match", 10_000)
    for i in range(SLOTS + waiters):
        job = f"job-{i}"
        # As a submitted job: its stream (with its TTL) and its user stream's channel.
        state.emit(job, [("status", {"status": "queued"})], refresh_ttl=True)
        backend.command("SET", state.keys.owner(job), state.keys.user_notify("u"))
        state.take_slot(
            job, "paid", model, limit=SLOTS, generation=None, wait_seconds=60, user_id="u"
        )
        state.queue_update(
            "paid",
            model,
            limit=SLOTS,
            op="start" if i < SLOTS else "wait",
            job_id=job,
            kind="job_match",
        )
    state.release_slot("job-0", "paid", model, limit=SLOTS, ended=True)
    before = commandstats(client)
    update = state.queue_update("paid", model, limit=SLOTS, op="end", job_id="job-0")
    state.emit_queue(update)
    used = command_delta(before, commandstats(client))
    backend.close()
    total = sum(used.values())
    return {
        "waiters": waiters,
        "events": len(update.views),
        "commands": total,
        "commands_per_waiter": round(total / max(1, waiters), 2),
        "round_trips": 2,
        "by_command": used,
    }


def queue_eta(database_url: str, quick: bool = False) -> dict[str, Any]:
    jobs = 10 if quick else 30
    say(f"queue ETA: a burst of {jobs} jobs on {SLOTS} slots (detached)")
    bench = Bench("queue", OVERRIDES, database_url)
    inline = Bench("queue-inline", INLINE_OVERRIDES, database_url)
    start_all([bench, inline])
    try:
        # Quick: shorter jobs (the same spread, relative to their length).
        slow = (10, 16) if quick else (25, 40)
        warmup = SLOTS if quick else 4
        # The inline burst runs at the same time on a stack of its own: its jobs only stream
        # (little CPU), and the two modes see the same machine.
        with ThreadPoolExecutor(1) as pool:
            inline_run = pool.submit(inline_messages, inline, jobs, warmup, slow)
            out: dict[str, Any] = {"accuracy": accuracy(bench, jobs, warmup, slow)}
            out["inline"] = inline_run.result()
        assert bench.redis_server
        out["update_cost"] = [update_cost(bench.redis_server.url, w) for w in (10, 100)]
    finally:
        bench.stop()
        inline.stop()
    e = out["accuracy"]["eta_error_pct"]
    say(f"queue ETA: error p50 {e['p50']} %, p90 {e['p90']} %")
    d = out["accuracy"]["qstash_messages_per_job"]["deliveries"]
    i = out["inline"]["qstash_messages_per_job"]["deliveries"]
    say(f"queue: QStash messages per job with waits: detached {d}, inline {i}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.queue_eta", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    pg = embedded.start_postgres()
    try:
        from lib.store import migrate

        migrate.apply(pg.url)
        results = queue_eta(pg.url, args.quick)
    finally:
        pg.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "queue_eta.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
