"""The `cs` command line: parsing and dispatch. Each command's work lives in its own module,
imported only when that command runs, so `cs --help` answers at once."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence

DESCRIPTION = """\
CareerShaper Jobs from the command line: submit LLM jobs and follow them live, read and cancel
them, mint dev tokens, redrive the broker's dead letters and check a deployment.

Reads the same environment and .env as the services (see .env.example), plus CS_TOKEN (an
access token) and CS_BASE_URL (the producer, default http://127.0.0.1:3000)."""

EPILOG = """\
examples (with `make dev` running):
  cs submit --dev --kind job_match --resume resume.txt --jd jd.txt --wait
  cs list --dev
  cs tail --dev JOB_ID
  cs doctor

exit status: 0 success; 1 the job did not succeed, the API or broker refused, or doctor found a
problem; 2 bad usage or configuration; 130 interrupted (resume with `cs tail JOB_ID`)."""

KINDS = (
    "job_match",
    "resume_customize",
    "interview_prep",
    "resume_summary",
    "detailed_resume_summary",
    "job_summary",
    "pre_match_audit",
    "ocr_extract",
    "job_vision_summary",
)
Handler = Callable[[argparse.Namespace], int]


def job_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id (a UUID): {value!r}") from None


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _api_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base-url",
        metavar="URL",
        help="the producer (default: $CS_BASE_URL or http://127.0.0.1:3000)",
    )
    who = common.add_mutually_exclusive_group()
    who.add_argument("--token", metavar="JWT", help="a Supabase access token (default: $CS_TOKEN)")
    who.add_argument(
        "--dev",
        action="store_true",
        help="act as this machine's dev user, with a token signed by SUPABASE_JWT_SECRET",
    )
    return common


def _view_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("display")
    group.add_argument(
        "--plain", action="store_true", help="line output even on a terminal (no live view)"
    )
    group.add_argument(
        "--quiet", action="store_true", help="in line output, progress only (no model text)"
    )


def _add(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    handler: str,
    help_text: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        parents=list(parents),
        formatter_class=_formatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _job_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    api = [_api_options()]
    p = _add(sub, "submit", "jobs:submit", "submit a job; with --wait, follow it to its end", api)
    p.add_argument("--kind", required=True, choices=KINDS, help="what to run")
    p.add_argument(
        "--resume", metavar="FILE", help="resume text file (- = stdin); every kind but job_summary"
    )
    p.add_argument(
        "--jd",
        metavar="FILE",
        help="job description text file; every kind but the resume summaries",
    )
    p.add_argument(
        "--match",
        metavar="FILE",
        help="a job_match result (JSON, or `cs status` output) for resume_customize and "
        "interview_prep",
    )
    p.add_argument(
        "--job-summary",
        metavar="FILE",
        help="a job_summary result (JSON, or `cs status` output) for pre_match_audit",
    )
    p.add_argument(
        "--image",
        metavar="FILE",
        help="a PNG, JPEG or WebP screenshot, uploaded first (ocr_extract, job_vision_summary)",
    )
    p.add_argument("--language", choices=("en", "zh"), help="the image kinds' answer language")
    p.add_argument(
        "--document",
        choices=("job_description", "resume"),
        help="what the image of ocr_extract shows (default: job_description)",
    )
    p.add_argument(
        "--tier",
        choices=("auto", "paid", "free"),
        default="auto",
        help="auto: paid if your coins cover it, else free (default: auto)",
    )
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="retry-safe: the same key returns the same job"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="stream the model's output and progress (stderr), then print the result JSON "
        "(stdout); exit 1 unless the job succeeded",
    )
    _view_options(p)
    p.epilog = "stdout: the job id, then with --wait the result as JSON."

    p = _add(sub, "status", "jobs:status", "print a job as JSON", api)
    p.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id")

    p = _add(
        sub,
        "tail",
        "jobs:tail",
        "follow a job's live events, resuming where this machine last stopped reading",
        api,
    )
    p.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="replay from the first event")
    start.add_argument("--last-event-id", metavar="ID", help="resume after this event id")
    p.add_argument(
        "--jsonl",
        action="store_true",
        help='print each event as a JSON line {"id", "event", "data"} on stdout',
    )
    _view_options(p)
    p.epilog = "stdout: the result JSON when the job succeeds (or the events, with --jsonl)."

    p = _add(
        sub,
        "watch",
        "watch:run",
        "follow all your active jobs, and those submitted meanwhile, in one stream",
        api,
    )
    p.add_argument("--last-event-id", metavar="ID", help="resume every job after this id")
    p.add_argument("--until-done", action="store_true", help="exit once every job seen has ended")
    p.add_argument(
        "--jsonl",
        action="store_true",
        help='print each event as a JSON line {"id", "event", "data"} (default: one line each)',
    )
    p.epilog = "stdout: one line per event, each naming its job."

    p = _add(sub, "cancel", "jobs:cancel", "cancel a queued or running job (refunded)", api)
    p.add_argument("job_id", type=job_id, metavar="JOB_ID", help="the job's id")

    _add(sub, "me", "jobs:me", "print your coins, free jobs left today and active jobs", api)

    p = _add(sub, "list", "jobs:list_jobs", "list your jobs, newest first", api)
    p.add_argument("--limit", type=int, default=20, help="how many (1-100, default 20)")
    p.add_argument("--before", type=job_id, metavar="JOB_ID", help="older than this job")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")

    p = _add(sub, "token", "jobs:token", "mint a development access token", [])
    p.add_argument(
        "--dev", action="store_true", help="required: a dev token signed by SUPABASE_JWT_SECRET"
    )
    p.add_argument(
        "--user",
        metavar="UUID",
        help="the user id (default: this machine's dev user, kept in "
        "~/.config/careershaper/dev-user)",
    )
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")


def _ops_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = sub.add_parser(
        "dlq",
        help="the broker's dead-letter queue (QStash or the dev broker)",
        description="Messages the broker gave up on. Uses QSTASH_URL and QSTASH_TOKEN.",
        formatter_class=_formatter,
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="{list,redrive}", required=True)
    p = _add(dlq_sub, "list", "dlq:list_dlq", "list the dead-letter queue")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _add(
        dlq_sub,
        "redrive",
        "dlq:redrive",
        "publish dead letters again (all of them without an id) and remove them from the DLQ",
    )
    p.add_argument("dlq_ids", nargs="*", metavar="DLQ_ID", help="which messages (default: all)")
    p.add_argument("--to", metavar="URL", help="deliver to this URL instead of the original one")

    p = _add(
        sub,
        "doctor",
        "doctor:doctor",
        "check the configuration and reach every dependency; exit 1 if something is wrong",
    )
    p.add_argument(
        "--role",
        choices=tuple(("api", "worker", "all")),
        default="all",
        help="check what the producer (api), the worker, or both need (default: all)",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the producer to check (default: $CS_BASE_URL or http://127.0.0.1:3000)",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="cs", description=DESCRIPTION, epilog=EPILOG, formatter_class=_formatter
    )
    sub = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _job_commands(sub)
    _ops_commands(sub)
    return root


def _handler(spec: str) -> Handler:
    import importlib

    module, _, name = spec.partition(":")
    fn: Handler = getattr(importlib.import_module(f"lib.cli.{module}"), name)
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `cs` command; returns its exit status."""
    args = parser().parse_args(argv)
    from lib.errors import AppError, ConfigError

    try:
        return _handler(args.handler)(args)
    except ConfigError as exc:
        print(f"cs: {exc.message}", file=sys.stderr)
        return 2
    except AppError as exc:
        print(f"cs: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away; say nothing more, like other Unix tools.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 1


def _describe(exc: Exception) -> str:
    from lib.cli.api import ApiError
    from lib.errors import AppError

    if not isinstance(exc, AppError):
        return str(exc)
    text = exc.message
    if isinstance(exc, ApiError):
        text = f"{exc.status} {exc.code}: {text}"
    if exc.details:
        text += f" {json.dumps(exc.details, ensure_ascii=False)}"
    if exc.retry_after:
        text += f" (retry after {exc.retry_after:g} s)"
    return text


if __name__ == "__main__":
    sys.exit(main())
