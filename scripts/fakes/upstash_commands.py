"""The Upstash stand-in's commands: a request's JSON body or path form read as Redis commands,
and the commands Upstash REST refuses (`CommandError`) before they reach Redis."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from flask import request

from scripts.fakes.upstash_wire import Arg

# Upstash REST serves none of these ("REST - Redis API Compatibility" in the docs): blocking
# commands, optimistic locking, pub/sub beyond PUBLISH/PUBSUB, and connection state that a
# stateless request cannot keep. SHUTDOWN and friends would take the shared test server down.
_REFUSED = frozenset(
    {
        "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
        "WATCH", "UNWATCH", "MULTI", "EXEC", "DISCARD",
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
        "MONITOR", "SELECT", "AUTH", "HELLO", "QUIT", "RESET", "CLIENT", "WAIT", "WAITAOF",
        "SYNC", "PSYNC", "REPLICAOF", "SLAVEOF", "SHUTDOWN", "DEBUG",
    }
)  # fmt: skip
_BLOCK_OPTION_COMMANDS = frozenset({"XREAD", "XREADGROUP"})


class CommandError(Exception):
    """A command that is refused or malformed before it reaches Redis."""


def body_json() -> Any:
    try:
        return json.loads(request.get_data() or b"null")
    except ValueError:
        raise CommandError("ERR the request body is not valid JSON") from None


def parse_commands(body: Any) -> list[tuple[Arg, ...] | CommandError]:
    if not isinstance(body, list) or not body:
        raise CommandError("ERR the body must be a non-empty JSON array of commands")
    parsed: list[tuple[Arg, ...] | CommandError] = []
    for item in body:
        try:
            parsed.append(parse_command(item))
        except CommandError as exc:
            parsed.append(exc)
    return parsed


def parse_command(body: Any) -> tuple[Arg, ...]:
    """Validate one command (a list of scalars) and turn its arguments into Redis strings."""
    if not isinstance(body, list) or not body:
        raise CommandError('ERR a command is a non-empty JSON array, e.g. ["GET", "key"]')
    args = tuple(_arg(value) for value in body)
    name = args[0].decode() if isinstance(args[0], bytes) else args[0]
    name = name.upper()
    if name in _REFUSED or (name in _BLOCK_OPTION_COMMANDS and _has_block_option(args)):
        raise CommandError(f"ERR Command is not available: '{name}'")
    return args


def _has_block_option(args: tuple[Arg, ...]) -> bool:
    # Options come before STREAMS; after it, "block" could be a key name.
    for arg in args[1:]:
        word = arg.upper() if isinstance(arg, str) else ""
        if word == "STREAMS":
            return False
        if word == "BLOCK":
            return True
    return False


def _arg(value: Any) -> Arg:
    # bool before int: JSON true is a Python bool, which is also an int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    raise CommandError("ERR command arguments must be strings or numbers")


def path_args() -> list[Arg]:
    """The path form's command: path segments, then the POST body, then query parameters."""
    raw = str(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or "")
    if raw.startswith("/"):
        # Undecoded path, so an escaped "/" (%2F) stays inside its argument.
        args: list[Arg] = [unquote(s) for s in raw.split("?", 1)[0].split("/")[1:]]
    else:
        args = list(request.path.split("/")[1:])
    body = request.get_data()
    if request.method in ("POST", "PUT") and body:
        args.append(body)
    for key, value in request.args.items(multi=True):
        if key != "_token":
            args.extend([key, value] if value else [key])
    return args
