"""Under gevent.monkey, do psycopg queries yield to the hub? (`make bench`'s worker-class run.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from scripts.stack.devstack import ROOT

# gevent + psycopg probe -----------------------------------------------------------------------
_PROBE = r"""
import json, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
import psycopg.waiting
from lib.store.backends import PostgresBackend

backend = PostgresBackend(sys.argv[1], max_size=4)
backend.ping()
gaps, last, stop = [0.0], [time.monotonic()], [False]

def ticker():
    while not stop[0]:
        gevent.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last[0]); last[0] = now

def query():
    with backend._pool.connection() as conn:
        conn.execute("select pg_sleep(0.5)")

tick = gevent.spawn(ticker)
gevent.sleep(0.05)
began = time.monotonic()
gevent.joinall([gevent.spawn(query) for _ in range(3)])
wall = time.monotonic() - began
stop[0] = True
tick.join()
print(json.dumps({"wait_func": psycopg.waiting.wait.__name__,
                  "three_half_second_queries_wall_s": round(wall, 3),
                  "max_hub_stall_ms": round(max(gaps) * 1000, 1)}))
"""


def probe_psycopg(database_url: str) -> dict[str, Any]:
    """Under gevent.monkey, do psycopg queries yield to the hub? And with the C wait (what
    psycopg picks when it is imported before patching)?"""
    out = {}
    for label, extra in (("default", {}), ("forced_wait_c", {"PSYCOPG_WAIT_FUNC": "wait_c"})):
        env = {**os.environ, **extra, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, database_url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = done.stdout.strip().splitlines()
        out[label] = json.loads(lines[-1]) if done.returncode == 0 and lines else done.stderr[-500:]
    return out


def probe_with_db() -> dict[str, Any]:
    from scripts.stack import embedded

    if os.environ.get("DATABASE_URL"):
        return probe_psycopg(os.environ["DATABASE_URL"])
    server = embedded.start_postgres()
    try:
        return probe_psycopg(server.url)
    finally:
        server.stop()
