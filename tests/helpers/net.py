"""Helpers shared by the tests: real servers on loopback, and waiting on conditions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from werkzeug.serving import make_server

from scripts.stack.embedded import free_port as free_port  # re-exported for the tests

T = TypeVar("T")


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


# The stand-ins' credentials in the tests.
UPSTASH_TOKEN = "upstash-test-token"  # noqa: S105
# The Supabase CLI's local service-role key shape: a JWT signed with the dev secret.
SERVICE_ROLE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UtZ"
    "GVtbyIsImV4cCI6MTk4MzgxMjk5Nn0.VkcJ801Bd30muD6WhyO-U6YR4hiCG96YZmkBFWN3QqI"
)
