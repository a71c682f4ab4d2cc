"""Where `cs` writes: stdout carries what a script reads (ids, JSON, tables), stderr what a person
watches (progress, notes, errors)."""

from __future__ import annotations

import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Tables piped to a file or another program are not cut to an imagined 80-column terminal.
PIPE_WIDTH = 200


def emit(value: Any) -> None:
    """Print a JSON value on stdout."""
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def note(message: str) -> None:
    """Print a human note on stderr."""
    print(message, file=sys.stderr, flush=True)


def console() -> Any:
    """A rich Console on stdout: the terminal's width, or a wide one when piped."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=PIPE_WIDTH)


def queue_line(view: dict[str, Any] | None) -> str:
    """A `queue` event or field as a person reads it: "#3 in line · about 40 s"; "starting"
    once the job has left the line."""
    if not view or int(view.get("position", 0)) <= 0:
        return "starting"
    return f"#{int(view['position'])} in line · about {int(view.get('eta_s', 0))} s"
