"""`cs`, run as a user runs it (a subprocess), against a stack started the way `make dev` does:
help, what it shows of a job, submit, status, tail, watch, cancel and dev tokens. The dead-letter
queue and `cs doctor` are test_cli_admin.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from fixtures import cli_suite
from helpers.cli import ROOT, Cli
from helpers.stack import JD, RESUME

from lib.cli.stream import JobProgress
from lib.config import DEV_JWT_SECRET
from lib.handlers import registry
from lib.handlers.base import detect_language
from scripts.stack.demo import SAMPLES

pytestmark = pytest.mark.e2e

stack = cli_suite.stack  # this module's own stack
cs = cli_suite.cs


COMMANDS = [
    [],
    ["submit"],
    ["status"],
    ["tail"],
    ["watch"],
    ["cancel"],
    ["me"],
    ["list"],
    ["token"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "redrive"],
    ["doctor"],
]


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "cs")
def test_every_command_explains_itself_with_help(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lib.cli.main", *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: cs")


def test_a_higher_running_attempt_discards_the_text_of_earlier_attempts() -> None:
    job = JobProgress(str(uuid.uuid4()))
    assert not job.apply("status", {"status": "running", "attempt": 1}, "1-0")
    job.apply("delta", {"text": '{"sco', "attempt": 1}, "2-0")
    job.apply("status", {"status": "retrying", "attempt": 1}, "3-0")
    assert job.apply("status", {"status": "running", "attempt": 2}, "4-0")
    assert (job.text, job.dropped) == ("", 5)
    job.apply("delta", {"text": '{"score": 1}', "attempt": 2}, "5-0")
    job.apply("delta", {"text": "late text of attempt 1", "attempt": 1}, "6-0")
    job.apply("status", {"status": "succeeded", "attempt": 2}, "7-0")
    assert job.text == '{"score": 1}' and job.finished
    assert (job.cursor.last_event_id, job.cursor.attempt) == ("7-0", 2)


def test_tail_and_watch_show_a_waiting_jobs_place_in_line_and_eta() -> None:
    import io

    from lib.cli.stream import PlainView
    from lib.cli.watch import UserStream

    job_id = str(uuid.uuid4())
    view = {"position": 3, "ahead": 2, "eta_s": 40, "job_id": job_id}
    job, out = JobProgress(job_id), io.StringIO()
    job.apply("queue", view, "1-0")
    PlainView(out).show(job, "queue", view, False)
    assert "#3 in line · about 40 s" in out.getvalue()
    assert job.queue == view
    job.apply("queue", {**view, "position": 0, "ahead": 0, "eta_s": 0}, "2-0")
    assert job.queue is None  # it left the line

    watched = io.StringIO()
    UserStream(watched, jsonl=False).take("queue", view, "1-0")
    assert watched.getvalue() == f"{job_id} queue #3 in line · about 40 s\n"


def test_submit_wait_follows_the_job_and_prints_a_valid_result(cs: Cli) -> None:
    done = cs.submit("--wait", resume=RESUME + " [[llm:slow=4]]")
    assert done.returncode == 0, done.stderr
    job_id, _, result = done.stdout.partition("\n")
    uuid.UUID(job_id)
    registry()["job_match"].result_model.model_validate(json.loads(result))
    assert "[cs] status running (attempt 1)" in done.stderr
    assert "[cs] status succeeded" in done.stderr
    assert '"score"' in done.stderr  # the model's streamed text


def test_submit_wait_shows_a_retry_starting_over_and_still_succeeds(cs: Cli) -> None:
    done = cs.submit("--wait", resume=RESUME + " [[llm:fail_once=503]]")
    assert done.returncode == 0, done.stderr
    assert "[cs] status retrying (attempt 1)" in done.stderr
    assert "[cs] attempt 2 started over" in done.stderr
    registry()["job_match"].result_model.model_validate_json(done.stdout.partition("\n")[2])


def test_submit_wait_exits_non_zero_when_the_job_fails(cs: Cli) -> None:
    done = cs.submit("--wait", resume=RESUME + " [[llm:invalid_json]]")
    assert done.returncode == 1
    assert "failed: invalid_model_output" in done.stderr
    assert done.stdout.strip() == done.stdout.splitlines()[0]  # the job id, and no result


def test_a_job_summary_feeds_a_pre_match_audit_each_submitted_with_its_own_files(
    cs: Cli,
) -> None:
    summary = cs(
        "submit", "--dev", "--kind", "job_summary", "--jd", cs.file("jd.txt", JD), "--wait"
    )
    assert summary.returncode == 0, summary.stderr
    result = json.loads(summary.stdout.partition("\n")[2])
    registry()["job_summary"].result_model.model_validate(result)
    refused = cs.submit("--job-summary", cs.file("summary.json", json.dumps(result)))
    assert refused.returncode == 1 and "input.job_summary" in refused.stderr  # not job_match's
    audit = cs(
        "submit",
        "--dev",
        "--kind",
        "pre_match_audit",
        "--resume",
        cs.file("resume.txt", RESUME),
        "--jd",
        cs.file("jd.txt", JD),
        "--job-summary",
        cs.file("summary.json", summary.stdout.partition("\n")[2]),
        "--wait",
    )
    assert audit.returncode == 0, audit.stderr
    registry()["pre_match_audit"].result_model.model_validate_json(audit.stdout.partition("\n")[2])


def test_an_image_is_uploaded_and_read_by_the_image_kinds_in_the_asked_language(
    cs: Cli,
) -> None:
    screenshot = str(SAMPLES / "job_screenshot.png")
    done = cs(
        "submit", "--dev", "--kind", "job_vision_summary", "--image", screenshot,
        "--language", "zh", "--wait",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.partition("\n")[2])
    registry()["job_vision_summary"].result_model.model_validate(result)
    assert detect_language(json.dumps(result, ensure_ascii=False)) == "zh"
    gif = cs.home / "shot.png"
    gif.write_bytes(b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;")
    refused = cs("submit", "--dev", "--kind", "ocr_extract", "--image", str(gif))
    assert refused.returncode == 1 and "unsupported_media_type" in refused.stderr


def test_a_kind_without_a_text_it_needs_is_refused_with_the_missing_field(cs: Cli) -> None:
    done = cs("submit", "--dev", "--kind", "resume_summary", "--jd", cs.file("jd.txt", JD))
    assert done.returncode == 1
    assert "input.resume_text" in done.stderr and "input.job_description" in done.stderr


def test_a_refused_submit_says_why_and_exits_1(cs: Cli) -> None:
    done = cs.submit("--tier", "paid", "--token", "not-a-token")
    assert done.returncode == 2  # --dev and --token together is a usage error
    refused = cs("me", "--token", "not-a-token")
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    anonymous = cs("me")
    assert anonymous.returncode == 1 and "--dev" in anonymous.stderr


def test_status_tail_list_and_me_show_the_users_job(cs: Cli) -> None:
    job_id = cs.submit().stdout.strip()
    events = jsonl(cs.ok("tail", "--dev", "--from-start", "--jsonl", job_id).stdout)
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "queued"
    assert events[-1]["data"]["status"] == "succeeded"
    assert len({e["id"] for e in events}) == len(events)
    job = json.loads(cs.ok("status", "--dev", job_id).stdout)
    assert job["id"] == job_id and job["status"] == "succeeded"
    page = json.loads(cs.ok("list", "--dev", "--json").stdout)
    assert [j["id"] for j in page["jobs"]] == [job_id]
    assert job_id in cs.ok("list", "--dev").stdout
    me = json.loads(cs.ok("me", "--dev").stdout)
    assert me["coins"] == 4 and me["active_jobs"] == 0
    result = cs.ok("tail", "--dev", job_id).stdout
    assert json.loads(result) == job["result"]


def test_tail_resumes_after_the_last_event_seen_without_repeating(cs: Cli) -> None:
    job_id = cs.submit(resume=RESUME + " [[llm:slow=8]]").stdout.strip()
    live = jsonl(cs.ok("tail", "--dev", "--from-start", "--jsonl", job_id).stdout)
    whole = jsonl(cs.ok("tail", "--dev", "--from-start", "--jsonl", job_id).stdout)
    assert live == whole  # followed live across the server's 1 s cuts: nothing lost or repeated
    middle = len(whole) // 2
    after = jsonl(
        cs.ok("tail", "--dev", "--jsonl", "--last-event-id", whole[middle]["id"], job_id).stdout
    )
    assert after == whole[middle + 1 :]
    # An interrupted `cs submit --wait` leaves a cursor; `cs tail` picks up after it.
    cursor = Path(cs.env["XDG_STATE_HOME"]) / "careershaper" / "streams" / f"{job_id}.json"
    cursor.parent.mkdir(parents=True)
    cursor.write_text(json.dumps({"last_event_id": whole[1]["id"], "attempt": 1}))
    resumed = cs.ok("tail", "--dev", "--jsonl", job_id)
    assert jsonl(resumed.stdout) == whole[2:]
    assert f"resuming after event {whole[1]['id']}" in resumed.stderr
    assert not cursor.exists()  # the job ended: the next tail replays it from the start


def test_watch_follows_every_active_job_in_one_stream_across_reconnects(cs: Cli) -> None:
    # The user stream follows active jobs only: slow enough that both are still running when
    # `cs watch` connects, even on a loaded machine (at 40 ms a token one had ended).
    jobs = [cs.submit(resume=RESUME + " [[llm:slow=100]]").stdout.strip() for _ in range(2)]
    watched = jsonl(cs.ok("watch", "--dev", "--until-done", "--jsonl").stdout)
    for job_id in jobs:  # across the server's 1 s cuts: each job exactly as its own stream
        own = jsonl(cs.ok("tail", "--dev", "--from-start", "--jsonl", job_id).stdout)
        mine = [(e["event"], e["data"]) for e in watched if e["data"]["job_id"] == job_id]
        assert mine == [(e["event"], e["data"]) for e in own]
    # One cursor resumes both jobs after watched[1]: nothing lost, nothing repeated. Across jobs
    # the order may differ from the first read (one XREAD returns its streams one after the
    # other), so each job's events are compared in their own order.
    after = watched[1]["id"]
    resumed = jsonl(
        cs.ok("watch", "--dev", "--until-done", "--jsonl", "--last-event-id", after).stdout
    )
    for job_id in jobs:
        assert [(e["event"], e["data"]) for e in resumed if e["data"]["job_id"] == job_id] == [
            (e["event"], e["data"]) for e in watched[2:] if e["data"]["job_id"] == job_id
        ]
    plain = cs.ok("watch", "--dev", "--until-done", "--last-event-id", after).stdout.splitlines()
    assert len(plain) == len(resumed) and plain[0].split()[0] == resumed[0]["data"]["job_id"]


def test_cancel_stops_a_running_job_and_refuses_a_finished_one(cs: Cli) -> None:
    job_id = cs.submit(resume=RESUME + " [[llm:slow=100]]").stdout.strip()
    cancelled = json.loads(cs.ok("cancel", "--dev", job_id).stdout)
    assert cancelled["status"] == "cancelled"
    assert cs("tail", "--dev", job_id).returncode == 1
    again = cs("cancel", "--dev", job_id)
    assert again.returncode == 1 and "409 already_finished" in again.stderr
    assert json.loads(cs.ok("me", "--dev").stdout)["coins"] == 5


def test_token_dev_mints_tokens_for_one_stable_dev_user(cs: Cli) -> None:
    first, second = cs.ok("token", "--dev"), cs.ok("token", "--dev")

    def subject(token: str) -> str:
        claims = jwt.decode(
            token.strip(), DEV_JWT_SECRET, algorithms=["HS256"], audience="authenticated"
        )
        return str(claims["sub"])

    assert subject(first.stdout) == subject(second.stdout)
    assert (cs.home / "config" / "careershaper" / "dev-user").read_text().strip() == subject(
        first.stdout
    )
    other = str(uuid.uuid4())
    assert subject(cs.ok("token", "--dev", "--user", other).stdout) == other
    refused = cs("token")
    assert refused.returncode == 2 and "--dev" in refused.stderr
    me = json.loads(cs.ok("me", "--token", first.stdout.strip()).stdout)
    assert me["user_id"] == subject(first.stdout)
