"""`cs submit`, `status`, `tail`, `cancel`, `me`, `list` and `token`: the producer API from a shell.

Output contract: stdout carries what a script wants (a job id, JSON), stderr what a person
watches (progress, notes). Exit status: 0 success, 1 the job did not succeed or the API
refused, 2 bad usage or configuration, 130 interrupted (resume with `cs tail`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lib.cli import env
from lib.cli.api import Api
from lib.cli.output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, console, emit, note
from lib.cli.stream import JobProgress, JsonLinesView, PlainView, RichView, View, follow
from lib.errors import ConfigError


def read_text(path: str, what: str) -> str:
    """The text of `path` (`-` is stdin). Raises ConfigError when it cannot be read."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} from {path}: {exc}") from None


def _earlier_result(path: str, kind: str) -> dict[str, Any]:
    """The `kind` result in `path`: the result itself, or a whole job / `cs status` output."""
    try:
        value = json.loads(read_text(path, f"{kind} result"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("result"), dict):
        value = value["result"]
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a {kind} result (a JSON object)")
    return value


def api_from(args: argparse.Namespace) -> Api:
    return Api(env.base_url(args.base_url), env.access_token(args.token, args.dev))


def make_view(args: argparse.Namespace, kind: str) -> View:
    if getattr(args, "jsonl", False):
        return JsonLinesView()
    if getattr(args, "plain", False) or not sys.stderr.isatty():
        return PlainView(deltas=not getattr(args, "quiet", False))
    return RichView(kind)


def watch(api: Api, job_id: str, view: View, cursor: env.Cursor, *, print_result: bool) -> int:
    """Follow a job to its end; print its result. Returns the exit status (0 if it succeeded)."""
    cursors = env.Cursors()
    job = JobProgress(job_id, cursor)
    try:
        follow(api.client, api.events_url(job_id), job, view)
    except KeyboardInterrupt:
        cursors.save(job_id, job.cursor)
        view.close()
        note(f"interrupted; resume with: cs tail {job_id}")
        return EXIT_INTERRUPTED
    except BaseException:
        cursors.save(job_id, job.cursor)
        view.close()
        raise
    view.close()
    cursors.forget(job_id)
    final = api.job(job_id)
    if final["status"] == "succeeded":
        if print_result:
            emit(final["result"])
        return EXIT_OK
    error = final.get("error") or {}
    note(f"job {job_id} {final['status']}: {error.get('code')}: {error.get('message')}")
    return EXIT_FAILED


def _image(path: str) -> tuple[bytes, str]:
    """An image file's bytes and its type by extension (the producer checks the bytes)."""
    types = {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
    }
    suffix = Path(path).suffix.lower()
    if suffix not in types:
        raise ConfigError(f"--image: a .png, .jpg or .webp file, not {path!r}")
    try:
        return Path(path).read_bytes(), types[suffix]
    except OSError as exc:
        raise ConfigError(f"--image: cannot read {path}: {exc.strerror}") from None


def submit(args: argparse.Namespace) -> int:
    # Only what was given: the producer refuses a missing or an extra field with its details.
    job_input: dict[str, Any] = {}
    if args.resume:
        job_input["resume_text"] = read_text(args.resume, "resume")
    if args.jd:
        job_input["job_description"] = read_text(args.jd, "job description")
    if args.match:
        job_input["match"] = _earlier_result(args.match, "job_match")
    if args.job_summary:
        job_input["job_summary"] = _earlier_result(args.job_summary, "job_summary")
    if args.language:
        job_input["language"] = args.language
    if args.document:
        job_input["document"] = args.document
    with api_from(args) as api:
        if args.image:
            job_input["image"] = {"path": api.upload(*_image(args.image))}
        created, body = api.submit(args.kind, job_input, args.tier, args.idempotency_key)
        job = body["job"]
        print(job["id"], flush=True)
        replay = "" if created else " (the earlier job of this Idempotency-Key)"
        note(f"job {job['id']}: {job['kind']}, {job['tier']} tier, {job['status']}{replay}")
        if not args.wait:
            return EXIT_OK
        return watch(api, job["id"], make_view(args, args.kind), env.Cursor(), print_result=True)


def tail(args: argparse.Namespace) -> int:
    if args.from_start:
        cursor = env.Cursor()
    elif args.last_event_id:
        cursor = env.Cursor(args.last_event_id)
    else:
        cursor = env.Cursors().load(args.job_id)
    if cursor.last_event_id:
        note(f"resuming after event {cursor.last_event_id}")
    with api_from(args) as api:
        view = make_view(args, "job")
        return watch(api, args.job_id, view, cursor, print_result=not args.jsonl)


def status(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        emit(api.job(args.job_id))
    return EXIT_OK


def cancel(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        job = api.cancel(args.job_id)
    emit(job)
    note(f"job {job['id']} cancelled; {job['cost']} coins refunded")
    return EXIT_OK


def me(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        emit(api.me())
    return EXIT_OK


def list_jobs(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        page = api.jobs(args.limit, args.before)
    if args.json:
        emit(page)
        return EXIT_OK
    from rich.table import Table

    table = Table("kind", "tier", "status", "cost", "attempts")
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("created (UTC)", no_wrap=True)
    for job in page["jobs"]:
        table.add_row(
            job["kind"],
            job["tier"],
            job["status"],
            str(job["cost"]),
            str(job["attempts"]),
            job["id"],
            job["created_at"][:19].replace("T", " "),
        )
    console().print(table)
    if page.get("next_before"):
        note(f"older jobs: cs list --before {page['next_before']}")
    return EXIT_OK


def token(args: argparse.Namespace) -> int:
    if not args.dev:
        raise ConfigError(
            "cs token mints development tokens only: pass --dev "
            "(real access tokens come from Supabase Auth)"
        )
    minted, user_id = env.dev_token(args.user, args.ttl)
    print(minted, flush=True)
    note(f"dev user {user_id}, valid {args.ttl} s")
    return EXIT_OK
