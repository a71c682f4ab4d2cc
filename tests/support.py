"""Helpers shared by the tests: real servers on loopback, and waiting on conditions."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from werkzeug.serving import make_server

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_wsgi(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve a WSGI app on a loopback port in a thread; yields its base URL."""
    server = make_server("127.0.0.1", port or 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Return the first truthy value of `condition()`, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
        last = condition()
    return last


# Reads and steps only tests need, straight on the backends (the product never calls them) --------
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
