"""`make demo`: submit one job of each kind as a dev user, show live progress, print results."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from lib.auth import mint_access_token

SAMPLES = Path(__file__).resolve().parent / "samples"
# The job description above as a screenshot, for the kinds that read an image.
SCREENSHOT = SAMPLES / "job_screenshot.png"


def _bar(pct: int, width: int = 24) -> str:
    filled = int(width * pct / 100)
    return "#" * filled + "-" * (width - filled)


@dataclass
class View:
    """What the terminal shows of one job."""

    chars: int = 0
    pct: int = 0
    stage: str = "queued"
    status: str = "queued"
    result: dict[str, Any] = field(default_factory=dict)

    def apply(self, event: str, data: dict[str, Any]) -> None:
        if event == "step":  # a pipeline's next step: its own text and progress
            self.chars, self.pct, self.stage = 0, 0, f"{data['step'] + 1}/{data['steps']}"
        elif event == "delta":
            self.chars += len(data["text"])
        elif event == "progress":
            self.pct, self.stage = data["pct"], data["stage"]
        elif event == "status":
            self.status = data["status"]
            if self.status == "running" and data.get("attempt", 1) > 1:
                self.chars = 0  # a retry starts over
        elif event == "result":
            self.result = data["result"]
        elif event == "error":
            self.result = {"error": data}

    def line(self, kind: str) -> str:
        return (
            f"  {kind:17} [{_bar(self.pct)}] {self.pct:3d}% {self.stage:10} "
            f"{self.status:9} {self.chars:6d} chars"
        )


def watch(client: httpx.Client, base: str, events_url: str, kind: str) -> View:
    """Follow a job's SSE stream to its end (reconnecting with Last-Event-ID), drawing it."""
    view = View()
    tty = sys.stdout.isatty()
    last_id = None
    while view.status not in ("succeeded", "failed", "cancelled"):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        with connect_sse(client, "GET", base + events_url, headers=headers) as source:
            for sse in source.iter_sse():
                if not sse.data:  # a `retry:` hint, not an event
                    continue
                last_id = sse.id or last_id
                view.apply(sse.event, json.loads(sse.data))
                if tty:
                    print("\r" + view.line(kind), end="", flush=True)
                elif sse.event != "delta":  # in a log, one line per stage change
                    print(view.line(kind), flush=True)
    if tty:
        print()
    return view


def upload_screenshot(client: httpx.Client, base: str) -> str:
    """Upload the sample screenshot as the front end does: a signed upload URL from
    `POST /api/uploads`, then the file straight to Storage (supabase-py's storage client, as
    supabase-js `uploadToSignedUrl`). Returns the object's path for a job's input."""
    from storage3 import SyncStorageClient

    upload = client.post(f"{base}/api/uploads", json={"content_type": "image/png"})
    upload.raise_for_status()
    grant = upload.json()
    storage_url = grant["signed_url"].split("/object/upload/sign/", 1)[0] + "/"
    with SyncStorageClient(storage_url, {}, http_client=httpx.Client(timeout=30)) as storage:
        storage.from_(grant["bucket"]).upload_to_signed_url(
            grant["path"], grant["token"], SCREENSHOT.read_bytes(), {"content-type": "image/png"}
        )
    return str(grant["path"])


def job_input(
    kind: str, resume: str, jd: str, earlier: dict[str, Any], image: str = ""
) -> dict[str, Any]:
    """The input of `kind` from the samples and the results of the kinds that ran before it."""
    if kind == "ocr_extract":
        return {"image": {"path": image}, "document": "job_description"}
    if kind == "job_vision_summary":
        return {"image": {"path": image}}
    if kind == "match_from_image":  # the pipeline: OCR, summary, audit, match, one job
        return {"image": {"path": image}, "resume_text": resume}
    if kind in ("resume_summary", "detailed_resume_summary"):
        return {"resume_text": resume}
    if kind == "job_summary":
        return {"job_description": jd}
    both: dict[str, Any] = {"resume_text": resume, "job_description": jd}
    if kind == "pre_match_audit" and "job_summary" in earlier:
        both["job_summary"] = earlier["job_summary"]
    if kind in ("resume_customize", "interview_prep") and "job_match" in earlier:
        both["match"] = earlier["job_match"]
    return both


# Each kind once, in the order whose results feed the later ones.
KINDS = (
    "resume_summary",
    "detailed_resume_summary",
    "job_summary",
    "pre_match_audit",
    "job_match",
    "resume_customize",
    "interview_prep",
    "ocr_extract",
    "job_vision_summary",
    "match_from_image",
)


def run_demo(base: str, jwt_secret: str) -> int:
    """Run every kind in order (the job summary feeds the audit, the match the last two).
    Exit code 0 if all pass."""
    user_id = str(uuid.uuid4())
    token = mint_access_token(user_id, jwt_secret)
    resume = (SAMPLES / "resume.txt").read_text()
    jd = (SAMPLES / "job_description.txt").read_text()
    headers = {"Authorization": f"Bearer {token}"}
    ok = True
    earlier: dict[str, Any] = {}
    with httpx.Client(headers=headers, timeout=httpx.Timeout(30, read=60)) as client:
        me = client.get(f"{base}/api/me").json()
        print(f"dev user {user_id}: {me['coins']} coins, {me['free_jobs_left_today']} free jobs")
        image = upload_screenshot(client, base)
        print(f"uploaded {SCREENSHOT.name} to Storage as {image}")
        for kind in KINDS:
            body = {"kind": kind, "input": job_input(kind, resume, jd, earlier, image)}
            response = client.post(f"{base}/api/jobs", json=body)
            if response.status_code != 202:
                print(f"{kind}: submit failed {response.status_code} {response.text}")
                ok = False
                continue
            submitted = response.json()
            print(f"\n{kind}: job {submitted['job']['id']} ({submitted['job']['tier']} tier)")
            final = watch(client, base, submitted["events_url"], kind)
            job = client.get(f"{base}/api/jobs/{submitted['job']['id']}").json()["job"]
            print(json.dumps(job["result"] or job["error"], indent=2, ensure_ascii=False)[:3000])
            if job["status"] != "succeeded" or final.status != "succeeded":
                ok = False
            else:
                earlier[kind] = job["result"]
        me = client.get(f"{base}/api/me").json()
        print(f"\nleft: {me['coins']} coins, {me['free_jobs_left_today']} free jobs")
    print("demo: all jobs succeeded" if ok else "demo: some jobs failed")
    return 0 if ok else 1
