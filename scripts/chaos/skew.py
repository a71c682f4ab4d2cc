"""Clock-skew scenarios of `make chaos`: their schedules and the checks that follow from them.

The worker's clock itself (libfaketime) is `scripts.chaos.clock`; this module only moves it
during a scenario and checks what the skew must leave behind.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from lib.state.keys import Keys
from scripts.chaos.faults import FaultContext, broker_stats, kill_worker, wait_broker_idle
from scripts.stack.devstack import Stack


@dataclass(frozen=True)
class Skew:
    """A scenario's worker clock and what must follow from it."""

    offset: float  # the worker's clock at start, in s from real time
    ends_at: float  # its offset when it ends the jobs (after a correction, 0)
    refused: bool  # every job's deliveries are refused (401) until the clock is corrected


# Schedules ------------------------------------------------------------------------------------
REFUSED_FOR_SECONDS = 5.0


def skewed(ctx: FaultContext) -> None:
    """The skew itself is the fault: it holds for the whole run."""
    ctx.at_peak()


def skewed_and_killed(ctx: FaultContext) -> None:
    """Leases under skew: SIGKILL the worker at the peak. The redelivered attempts may start
    only once the dead attempts' leases lapse; Redis times them (a relative PX), so they lapse
    after LEASE_TTL_SECONDS whatever the worker's clock says."""
    ctx.at_peak()
    running = ctx.load.monitor.counts.get("running", 0)
    kill_worker(ctx.stack)
    ctx.note(f"SIGKILL worker ({running} running)")
    time.sleep(1.0)
    ctx.stack.restart("worker")


def step_after_refusals(ctx: FaultContext) -> None:
    """The lagging clock gets every delivery refused; once every job was submitted and its
    first deliveries refused, NTP steps the worker's clock to real time."""
    assert ctx.clock is not None
    ctx.load.submitted_all.wait(90)
    time.sleep(REFUSED_FOR_SECONDS)
    refused = refusals(ctx.stack)
    ctx.clock.set(0)
    ctx.note(
        f"clock stepped to real time after {refused['execute']} deliveries of"
        f" {refused['messages']} messages were refused (401)"
    )


def step_after_dead_letters(ctx: FaultContext) -> None:
    """The skew outlasts every message's retries: once all are dead-lettered (and their failure
    callbacks refused too), NTP steps the worker's clock to real time."""
    assert ctx.clock is not None
    ctx.load.submitted_all.wait(90)
    accepted = len(ctx.load.accepted())
    deadline = time.monotonic() + 40
    while broker_stats(ctx.stack).get("failed", 0) < accepted and time.monotonic() < deadline:
        time.sleep(0.2)
    dead = broker_stats(ctx.stack).get("failed", 0)
    refused = refusals(ctx.stack)
    ctx.clock.set(0)
    ctx.note(
        f"{dead} messages dead-lettered after {refused['execute']} refused deliveries,"
        f" {refused['failed']} refused failure callbacks; clock stepped to real time"
    )


def redrive_dead_letters(ctx: FaultContext) -> None:
    """After the failure callbacks failed and refunded every job: `cs dlq redrive`, as an
    operator would once the clock is fixed. Each redriven delivery must run nothing."""
    cs = Path(sys.executable).with_name("cs")
    out = subprocess.run(  # noqa: S603 - our own CLI
        [str(cs), "dlq", "redrive"],
        env=ctx.stack.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    redriven = sum(1 for line in out.stdout.splitlines() if " -> " in line)
    if out.returncode != 0:
        ctx.errors.append(f"cs dlq redrive exited {out.returncode}: {out.stderr.strip()[-300:]}")
    pending = wait_broker_idle(ctx.stack, time.monotonic() + 60)
    ctx.note(f"cs dlq redrive: {redriven} messages delivered again")
    if pending:
        ctx.errors.append(f"{pending} redriven messages still undelivered")


# Checks ---------------------------------------------------------------------------------------
_DELIVERY = re.compile(r"deliver msg=(\S+) dest=\S+/v1/(execute|failed) attempt=\d+ status=(\S+)")


def refusals(stack: Stack) -> dict[str, int]:
    """Deliveries the worker refused with 401, from the dev broker's log: to /v1/execute, to
    /v1/failed, and the number of distinct job messages refused at least once."""
    counts = {"execute": 0, "failed": 0, "messages": 0}
    log = (stack.log_dir or Path()) / "broker.log"
    if not log.exists():
        return counts
    messages = set()
    for match in _DELIVERY.finditer(log.read_text(errors="replace")):
        message_id, path, status = match.groups()
        if status == "401":
            counts[path] += 1
            if path == "execute":
                messages.add(message_id)
    counts["messages"] = len(messages)
    return counts


def worker_offsets(client: redis.Redis, keys: Keys, job_ids: list[str]) -> list[float]:
    """The worker's clock as the jobs' streams show it: the `ts` the worker stamps on the
    terminal status it writes (succeeded, or failed by an attempt or the failure callback)
    against the Redis server time in that entry's id. Other events may be held and written
    later than stamped; a cancel's terminal event is the producer's."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xrevrange(keys.events(job_id), count=1)
    offsets = []
    for entries in pipe.execute():
        for entry_id, fields in entries:
            data: dict[str, Any] = json.loads(fields.get("d", "{}"))
            if fields.get("t") == "status" and data.get("status") in ("succeeded", "failed"):
                offsets.append(float(data["ts"]) - int(entry_id.split("-")[0]) / 1000)
    return offsets


def check_skew(
    skew: Skew, stack: Stack, client: redis.Redis, prefix: str, job_ids: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """Did the worker run on the skewed clock, and were deliveries refused exactly when the
    skew exceeded the tolerance? Returns (violations, stats)."""
    violations = []
    offsets = worker_offsets(client, Keys(prefix), job_ids)
    seen = (
        {
            "median": round(statistics.median(offsets), 2),
            "min": round(min(offsets), 2),
            "max": round(max(offsets), 2),
            "n": len(offsets),
        }
        if offsets
        else None
    )
    if seen is None:
        violations.append("no terminal event of the worker to measure its clock by")
    elif abs(seen["median"] - skew.ends_at) > 5:
        violations.append(
            f"the worker's clock ran at {seen['median']:+.1f}s, not {skew.ends_at:+.0f}s"
        )
    refused = refusals(stack)
    if not skew.refused and refused["execute"] + refused["failed"]:
        violations.append(
            f"{refused['execute'] + refused['failed']} deliveries refused (401)"
            " although the tolerance covers the skew"
        )
    if skew.refused and refused["messages"] < len(job_ids):
        violations.append(
            f"only {refused['messages']} of {len(job_ids)} jobs had a delivery refused:"
            " the skew did not hold for every job"
        )
    return violations, {"worker_clock_s": seen, "refused_401": refused}
