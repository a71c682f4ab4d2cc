"""The invariants every chaos scenario ends with, checked over Postgres and Redis after drain.

Each check returns human-readable violations naming the job or user; an empty list is a pass.
The checks cover every job of the scenario's users, including any the client never got an id
for (a submit that failed half-way must leave nothing charged and nothing queued).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from lib import handlers
from lib.state.keys import Keys
from scripts.chaos.load import TERMINAL, Load


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, text: str) -> None:
        self.violations.append(text)


def check(
    database_url: str,
    client: redis.Redis,
    prefix: str,
    load: Load,
    *,
    max_attempts: int | None = None,
) -> Report:
    """Run every invariant. `max_attempts` also requires that no job ran more attempts (used
    where no fault may cause a retry, e.g. duplicate deliveries; 0 where none may run at all)."""
    report = Report()
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        jobs = conn.execute(
            "select * from cs_jobs where user_id = any(%s::uuid[])", (load.user_ids,)
        ).fetchall()
        ledger = conn.execute(
            "select * from cs_ledger where user_id = any(%s::uuid[])", (load.user_ids,)
        ).fetchall()
        balances = conn.execute(
            "select * from cs_balances where user_id = any(%s::uuid[])", (load.user_ids,)
        ).fetchall()
        free = conn.execute(
            "select * from cs_free_usage where user_id = any(%s::uuid[])", (load.user_ids,)
        ).fetchall()
    by_id = {str(j["id"]): j for j in jobs}
    _jobs_terminal_and_expected(report, load, by_id, max_attempts)
    _results(report, jobs)
    _coins(report, jobs, ledger, balances, free, load.user_ids)
    _admission(report, client, prefix)
    _streams(report, client, Keys(prefix), jobs)
    _live_sample(report, client, Keys(prefix), load, by_id)
    statuses = Counter(j["status"] for j in jobs)
    report.stats |= {
        "jobs": len(jobs),
        "accepted": len(load.accepted()),
        "refused": Counter(s.error_code for s in load.sent if not s.job_id),
        "statuses": dict(statuses),
        "retried": sum(1 for j in jobs if j["attempts"] > 1),
        "max_attempts": max((j["attempts"] for j in jobs), default=0),
        "cancel_requests": sum(1 for s in load.sent if s.cancel_status is not None),
    }
    return report


def _jobs_terminal_and_expected(
    report: Report, load: Load, by_id: dict[str, dict[str, Any]], max_attempts: int | None
) -> None:
    for job in by_id.values():
        if job["status"] not in TERMINAL:
            report.add(f"job {job['id']} is still {job['status']} after drain")
    for sent in load.accepted():
        found = by_id.get(sent.job_id or "")
        if found is None:
            report.add(f"job {sent.job_id} was accepted (202) but is not in the database")
            continue
        job = found
        status = job["status"]
        if sent.cancel_status == 202:
            expected = {"cancelled"}
        elif sent.cancel_status is not None and sent.cancel_status != 409:
            expected = {sent.plan.expect, "cancelled"}  # the cancel's answer was lost
        else:
            expected = {sent.plan.expect}
        if status not in expected:
            error = job["error"] or {}
            report.add(
                f"job {job['id']} ended {status} ({error.get('code')}: {error.get('message')}),"
                f" expected {'/'.join(sorted(expected))} (attempts {job['attempts']})"
            )
        if max_attempts is not None and job["attempts"] > max_attempts:
            report.add(f"job {job['id']} ran {job['attempts']} attempts (at most {max_attempts})")


def _partial(job: dict[str, Any]) -> bool:
    """A cancelled job may keep the output delivered before the cancel, and nothing else."""
    result = job["result"]
    return job["status"] == "cancelled" and set(result) == {"partial"}


def _results(report: Report, jobs: list[dict[str, Any]]) -> None:
    registry = handlers.registry()
    for job in jobs:
        if job["status"] == "succeeded":
            if job["result"] is None:
                report.add(f"job {job['id']} succeeded without a result")
                continue
            try:
                registry[job["kind"]].result_model.model_validate(job["result"])
            except Exception as exc:  # noqa: BLE001 - any validation failure is a violation
                report.add(f"job {job['id']} has an invalid result: {type(exc).__name__}")
        elif job["result"] is not None and not _partial(job):
            report.add(f"job {job['id']} is {job['status']} but has a result")
        if job["status"] in ("failed", "cancelled") and not job["error"]:
            report.add(f"job {job['id']} is {job['status']} without an error")


def _coins(
    report: Report,
    jobs: list[dict[str, Any]],
    ledger: list[dict[str, Any]],
    balances: list[dict[str, Any]],
    free: list[dict[str, Any]],
    user_ids: list[str],
) -> None:
    _ledger_rows(report, jobs, ledger)
    _balances(report, jobs, ledger, balances, user_ids)
    _free_use(report, jobs, free, _kept(ledger))


def _kept(ledger: list[dict[str, Any]]) -> set[str]:
    """Jobs that failed or were cancelled after their output was delivered: not refunded."""
    return {str(r["job_id"]) for r in ledger if r["reason"] == "no_refund_delivered"}


def _ledger_rows(report: Report, jobs: list[dict[str, Any]], ledger: list[dict[str, Any]]) -> None:
    """One debit per paid job, one refund decision (a refund, or none because the output was
    delivered) per failed or cancelled job, nothing twice."""
    rows = Counter((str(r["job_id"]), r["reason"]) for r in ledger if r["job_id"])
    for (job_id, reason), n in rows.items():
        if n > 1:
            report.add(f"job {job_id} has {n} '{reason}' ledger rows")
    for job in jobs:
        job_id, ended = str(job["id"]), job["status"] in ("failed", "cancelled")
        debits = rows[(job_id, "debit")]
        refunds = rows[(job_id, "refund")] + rows[(job_id, "no_refund_delivered")]
        if job["tier"] == "paid" and debits != 1:
            report.add(f"paid job {job_id} has {debits} debits")
        if job["tier"] == "free" and debits:
            report.add(f"free job {job_id} was debited")
        if refunds != (1 if ended else 0):
            report.add(f"job {job_id} ({job['status']}) has {refunds} refunds")


def _balances(
    report: Report,
    jobs: list[dict[str, Any]],
    ledger: list[dict[str, Any]],
    balances: list[dict[str, Any]],
    user_ids: list[str],
) -> None:
    """balance == grants - cost of paid jobs kept (succeeded, or their output delivered) == the
    sum of the user's ledger."""
    coins = {str(b["user_id"]): b["coins"] for b in balances}
    grants: dict[str, int] = defaultdict(int)
    sums: dict[str, int] = defaultdict(int)
    for row in ledger:
        sums[str(row["user_id"])] += row["amount"]
        if row["reason"] == "grant":
            grants[str(row["user_id"])] += row["amount"]
    spent: dict[str, int] = defaultdict(int)
    kept = _kept(ledger)
    for job in jobs:
        if job["tier"] == "paid" and (job["status"] == "succeeded" or str(job["id"]) in kept):
            spent[str(job["user_id"])] += job["cost"]
    for user in user_ids:
        if user not in coins:
            continue  # never got as far as a submit
        if coins[user] != grants[user] - spent[user]:
            report.add(
                f"user {user}: balance {coins[user]} != grant {grants[user]}"
                f" - kept paid {spent[user]}"
            )
        if coins[user] != sums[user]:
            report.add(f"user {user}: balance {coins[user]} != ledger sum {sums[user]}")


def _free_use(
    report: Report, jobs: list[dict[str, Any]], free: list[dict[str, Any]], kept: set[str]
) -> None:
    """A day's free use counts that day's free jobs that did not fail or get cancelled, or did
    after their output was delivered."""
    used: Counter[tuple[str, Any]] = Counter()
    for job in jobs:
        live = job["status"] in ("queued", "running", "succeeded") or str(job["id"]) in kept
        if job["tier"] == "free" and live:
            used[(str(job["user_id"]), job["created_at"].astimezone(UTC).date())] += 1
    for row in free:
        key = (str(row["user_id"]), row["day"])
        if row["used"] != used[key]:
            report.add(f"user {key[0]}: free use {row['used']} != {used[key]} kept free jobs")


def _admission(report: Report, client: redis.Redis, prefix: str) -> None:
    now_ms = int(time.time() * 1000)
    for key in client.scan_iter(match=f"{prefix}adm:*", count=1000):
        live: Any = client.zrangebyscore(key, f"({now_ms}", "+inf", withscores=True)
        for member, deadline in live:
            left = (deadline - now_ms) / 1000
            report.add(f"admission leak: job {member} still in {key} (for {left:.0f}s more)")


def _streams(report: Report, client: redis.Redis, keys: Keys, jobs: list[dict[str, Any]]) -> None:
    pipe = client.pipeline(transaction=False)
    for job in jobs:
        job_id = str(job["id"])
        pipe.xrange(keys.events(job_id))
        pipe.get(keys.done(job_id))
        pipe.ttl(keys.events(job_id))
        pipe.ttl(keys.done(job_id))
        pipe.pttl(keys.lease(job_id))
    answers = pipe.execute()
    for i, job in enumerate(jobs):
        entries, done, ev_ttl, done_ttl, lease_ttl = answers[i * 5 : i * 5 + 5]
        job_id = str(job["id"])
        for problem in stream_problems(entries, job):
            report.add(f"job {job_id}: {problem}")
        if done != job["status"]:
            report.add(f"job {job_id}: done flag {done!r} != database status {job['status']}")
        if ev_ttl == -1 or done_ttl == -1 or lease_ttl == -1:
            report.add(f"job {job_id}: a per-job key has no TTL")


def stream_problems(entries: list[tuple[str, dict[str, str]]], job: dict[str, Any]) -> list[str]:
    """What is wrong with one job's event stream, given its database row."""
    if not entries:
        return ["the event stream is empty"]
    events = [(fields.get("t"), json.loads(fields.get("d", "{}"))) for _, fields in entries]
    problems = []
    if events[0] != ("status", events[0][1]) or events[0][1].get("status") != "queued":
        problems.append("the stream does not start with status queued")
    terminal = [i for i, (t, d) in enumerate(events) if t == "status" and d["status"] in TERMINAL]
    if len(terminal) != 1:
        problems.append(f"{len(terminal)} terminal statuses")
    elif terminal[0] != len(events) - 1:
        problems.append(f"{len(events) - 1 - terminal[0]} event(s) after the terminal status")
    if terminal and events[terminal[-1]][1]["status"] != job["status"]:
        problems.append(
            f"terminal event {events[terminal[-1]][1]['status']} != database {job['status']}"
        )
    results = [i for i, (t, _) in enumerate(events) if t == "result"]
    if job["status"] == "succeeded":
        if len(results) != 1 or not terminal or results[0] != terminal[-1] - 1:
            problems.append(f"{len(results)} result events, not one right before succeeded")
        elif events[results[0]][1].get("result") != job["result"]:
            problems.append("the streamed result differs from the stored one")
    elif results:
        problems.append(f"{len(results)} result events on a {job['status']} job")
    problems += _attempt_problems(events, job)
    return problems


def _attempt_problems(events: list[tuple[Any, dict[str, Any]]], job: dict[str, Any]) -> list[str]:
    """Attempts start in order, and no attempt writes after a later one started (no two
    attempts of one job ran at the same time)."""
    current = 0
    problems = []
    for event_type, data in events:
        attempt = int(data.get("attempt") or 0)
        if event_type == "status" and data["status"] == "running":
            if attempt <= current:
                problems.append(f"attempt {attempt} started after attempt {current}")
            current = max(current, attempt)
        elif event_type == "delta" and attempt != current:
            problems.append(f"a delta of attempt {attempt} while attempt {current} runs")
    if current > job["attempts"]:
        problems.append(f"stream shows attempt {current}, database {job['attempts']}")
    return problems[:3]


def _live_sample(
    report: Report, client: redis.Redis, keys: Keys, load: Load, by_id: dict[str, Any]
) -> None:
    """The streams a client followed live over SSE: nothing lost, nothing repeated."""
    followed = [s for s in load.accepted() if s.plan.follow]
    for sent in followed:
        if sent.follow_problem:
            report.add(f"job {sent.job_id}: {sent.follow_problem}")
            continue
        entries: Any = client.xrange(keys.events(sent.job_id or ""))
        stored = [entry_id for entry_id, _ in entries]
        seen = [entry_id for entry_id, _, _ in sent.seen]
        if seen != stored:
            report.add(
                f"job {sent.job_id}: the SSE client saw {len(seen)} events"
                f" ({len(set(seen))} distinct), the stream holds {len(stored)}"
            )
        job = by_id.get(sent.job_id or "")
        if job and sent.seen and sent.seen[-1][2].get("status") != job["status"]:
            report.add(f"job {sent.job_id}: the SSE client's last event is not {job['status']}")
    report.stats["followed_live"] = len(followed)
