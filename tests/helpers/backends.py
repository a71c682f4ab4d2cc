"""Reads and steps only tests need, straight on the backends (the product never calls them)."""

from __future__ import annotations

from typing import Any


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
