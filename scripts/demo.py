"""`make demo`: submit one job of each kind as a dev user, show live progress, print results."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from lib.auth import mint_access_token

SAMPLES = Path(__file__).resolve().parent / "samples"


def _bar(pct: int, width: int = 24) -> str:
    filled = int(width * pct / 100)
    return "#" * filled + "-" * (width - filled)


def watch(client: httpx.Client, base: str, events_url: str, kind: str) -> dict[str, Any]:
    """Follow a job's SSE stream to its end, drawing progress; returns the final event data."""
    chars, pct, stage, status = 0, 0, "queued", "queued"
    result: dict[str, Any] = {}
    tty = sys.stdout.isatty()
    last_id = None
    while status not in ("succeeded", "failed", "cancelled"):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        with connect_sse(client, "GET", base + events_url, headers=headers) as source:
            for sse in source.iter_sse():
                if not sse.data:  # a `retry:` hint, not an event
                    continue
                last_id = sse.id or last_id
                data = json.loads(sse.data)
                if sse.event == "delta":
                    chars += len(data["text"])
                elif sse.event == "progress":
                    pct, stage = data["pct"], data["stage"]
                elif sse.event == "status":
                    status = data["status"]
                    if status == "running" and data.get("attempt", 1) > 1:
                        chars = 0  # a retry starts over
                elif sse.event == "result":
                    result = data["result"]
                elif sse.event == "error":
                    result = {"error": data}
                line = f"  {kind:17} [{_bar(pct)}] {pct:3d}% {stage:10} {status:9} {chars:6d} chars"
                if tty:
                    print("\r" + line, end="", flush=True)
                elif sse.event != "delta":  # in a log, one line per stage change
                    print(line, flush=True)
    if tty:
        print()
    return {"status": status, "result": result}


def run_demo(base: str, jwt_secret: str) -> int:
    """Run the three kinds in order (the match feeds the other two). Exit code 0 if all pass."""
    user_id = str(uuid.uuid4())
    token = mint_access_token(user_id, jwt_secret)
    resume = (SAMPLES / "resume.txt").read_text()
    jd = (SAMPLES / "job_description.txt").read_text()
    headers = {"Authorization": f"Bearer {token}"}
    ok = True
    match: dict[str, Any] | None = None
    with httpx.Client(headers=headers, timeout=httpx.Timeout(30, read=60)) as client:
        me = client.get(f"{base}/api/me").json()
        print(f"dev user {user_id}: {me['coins']} coins, {me['free_jobs_left_today']} free jobs")
        for kind in ("job_match", "resume_customize", "interview_prep"):
            job_input: dict[str, Any] = {"resume_text": resume, "job_description": jd}
            if match and kind != "job_match":
                job_input["match"] = match
            response = client.post(f"{base}/api/jobs", json={"kind": kind, "input": job_input})
            if response.status_code != 202:
                print(f"{kind}: submit failed {response.status_code} {response.text}")
                ok = False
                continue
            body = response.json()
            print(f"\n{kind}: job {body['job']['id']} ({body['job']['tier']} tier)")
            final = watch(client, base, body["events_url"], kind)
            job = client.get(f"{base}/api/jobs/{body['job']['id']}").json()["job"]
            print(json.dumps(job["result"] or job["error"], indent=2, ensure_ascii=False)[:3000])
            if job["status"] != "succeeded" or final["status"] != "succeeded":
                ok = False
            elif kind == "job_match":
                match = job["result"]
        me = client.get(f"{base}/api/me").json()
        print(f"\nleft: {me['coins']} coins, {me['free_jobs_left_today']} free jobs")
    print("demo: all jobs succeeded" if ok else "demo: some jobs failed")
    return 0 if ok else 1
