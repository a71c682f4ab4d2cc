"""Reads and steps only tests need, straight on the backends (the product never calls them), and
the contract suites' shorthands (test_state*.py, test_store*.py): fresh ids, a submit with the
store suite's defaults, a user's balance read straight from Postgres.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

INPUT = {"resume_text": "r", "job_description": "d"}


def new_id() -> str:
    return str(uuid.uuid4())


def live_for_user(state: Any, user_id: str, tier: str) -> int:
    """How many of the user's jobs of `tier` hold an admission slot now."""
    import lib.state

    now = lib.state._now_ms()  # through the module: a test may move its clock
    keys = [state.keys.user(user_id, tier)]
    return int(state.backend.run(lib.state.scripts.LIVE, keys, [now]))


def open_streams(state: Any, user_id: str) -> int:
    """The number of the user's event streams that hold a slot now."""
    import lib.state

    now = lib.state._now_ms()  # through the module: a test may move its clock
    keys = [state.keys.streams(user_id)]
    return int(state.backend.run(lib.state.scripts.LIVE, keys, [now]))


def renew(state: Any, job_id: str, tier: str, user_id: str, token: str) -> Any:
    """One lease's heartbeat (RENEW with its admission deadlines), as the worker sends it."""
    return state.renew_many([(job_id, tier, user_id, token, True)])[0]


def refund(store: Any, job_id: str) -> bool:
    """`cs_refund` once: True if this call gave coins (or the free daily use) back."""
    r = store.backend.call(
        "cs_refund", {"p_job_id": job_id, "p_max_pct": store.refund_max_delivered_pct}
    )
    return bool(r["refunded"])


class Counting:
    """A real backend that also lists what it was asked to run: ("script", name) for a Lua
    script, ("command", NAME) for a plain command (a shared Redis's INFO commandstats would also
    count other processes' commands)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        self.calls.append(("script", script.name))
        return self.backend.run(script, keys, args)

    def command(self, *args: Any) -> Any:
        self.calls.append(("command", str(args[0]).upper()))
        return self.backend.command(*args)


def submit(
    store: Any,
    user: str,
    *,
    tier: str = "paid",
    cost: int = 2,
    key: str | None = None,
    digest: str = "h",
) -> dict[str, Any]:
    return store.submit(
        job_id=new_id(),
        user_id=user,
        kind="job_match",
        tier=tier,
        cost=cost,
        input=INPUT,
        idempotency_key=key,
        request_hash=digest,
    )


def balance(database_url: str, user: str) -> tuple[int, int]:
    """(coins, sum of the ledger) for a user, read straight from Postgres."""
    with psycopg.connect(database_url) as conn:
        coins = conn.execute("select coins from cs_balances where user_id = %s", (user,)).fetchone()
        ledger = conn.execute(
            "select coalesce(sum(amount), 0) from cs_ledger where user_id = %s", (user,)
        ).fetchone()
    return int(coins[0]) if coins else 0, int(ledger[0]) if ledger else 0
