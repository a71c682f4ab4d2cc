"""Cancel to close: from `POST /api/jobs/<id>/cancel` to the offline LLM seeing its client go away.

SPEC "Stop means stop spending": a cancel aborts the in-flight model request, p99 <= 1 s. The
offline LLM records each streamed answer and the moment its client closed the connection
(`GET /_offline/streams`, `client_closed` with `ended_at`), on the same host clock as this
client. Jobs run one at a time, so the newest record is the job's own. Nobody watches them: the
worker writes nothing until the end, so it learns of the cancel only from the cancel's
announcement on the watch channel (the slowest path; a watched job also finds its next flush
refused).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from scripts.bench.common import Bench, body, dist, new_user, say

TARGET_P99_MS = 1000


def _llm_streams(client: httpx.Client, llm: str, since: float) -> list[dict[str, Any]]:
    answer = client.get(f"{llm}/_offline/streams").json()["streams"]
    return [s for s in answer if s["started_at"] >= since]


def _until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    return None


def _one(bench: Bench, client: httpx.Client, llm: str) -> float | None:
    _, headers = new_user()
    began = time.time()
    answer = client.post("/api/jobs", json=body("[[llm:slow=50]]"), headers=headers)
    answer.raise_for_status()
    job_id = answer.json()["job"]["id"]
    if not _until(lambda: _llm_streams(client, llm, began), 30):
        return None
    cancelled_at = time.time()
    client.post(f"/api/jobs/{job_id}/cancel", headers=headers).raise_for_status()
    closed = _until(
        lambda: [s for s in _llm_streams(client, llm, began) if s["outcome"] == "client_closed"],
        10,
    )
    return float(closed[0]["ended_at"]) - cancelled_at if closed else None


def cancel_to_close(bench: Bench, quick: bool) -> dict[str, Any]:
    """p50/p99 ms from the cancel POST to the provider connection closing, over N jobs."""
    assert bench.stack
    runs = 5 if quick else 30
    say(f"cancel to close: {runs} running jobs cancelled one at a time")
    llm = f"http://127.0.0.1:{bench.stack.ports.llm}"
    seconds: list[float] = []
    missed = 0
    with httpx.Client(base_url=bench.url, timeout=30) as client:
        for _ in range(runs):
            took = _one(bench, client, llm)
            if took is None:
                missed += 1
            else:
                seconds.append(took)
    return {
        "jobs": runs,
        "not_closed_within_10_s": missed,
        "ms": dist(seconds, 1000),
        "target_p99_ms": TARGET_P99_MS,
    }
