"""vercel.json's rewrites, compiled the way `vercel build` compiles them (for api/_local.py).

`vercel build` turns a rewrite such as `/api/jobs/:id/events` -> `/api/events` into the route
`src: ^/api/jobs(?:/([^/]+?))/events$`, `dest: /api/events?id=$1`: each source parameter that
the destination does not use is added to its query. tests/test_rewrites.py holds the routes a
real build (vercel 64.0.2) wrote for this vercel.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

ROOT = Path(__file__).resolve().parents[1]
VERCEL_JSON = ROOT / "vercel.json"


@dataclass(frozen=True)
class Rewrite:
    """One `vercel.json` rewrite, compiled the way `vercel build` compiles it."""

    source: re.Pattern[str]
    params: tuple[str, ...]
    path: str
    query: tuple[tuple[str, str], ...]

    def apply(self, path: str) -> tuple[str, list[tuple[str, str]]] | None:
        """The destination path and query for `path`, or None when the source does not match."""
        match = self.source.match(path)
        if match is None:
            return None
        values = [value or "" for value in match.groups()]
        return self.path, [*self.query, *zip(self.params, values, strict=True)]


def compile_rewrite(source: str, destination: str) -> Rewrite:
    """Compile one rewrite. Sources use path-to-regexp's `:name` (one segment) and `:name*`
    (zero or more segments), the syntax vercel.json uses here; anything else raises ValueError,
    so a new rewrite this router cannot follow fails the tests rather than routing wrongly."""
    pattern, params = "", []
    for segment in source.strip("/").split("/"):
        param = re.fullmatch(r":(\w+)(\*?)", segment)
        if param is None:
            if re.search(r"[:()*+?{}]", segment):
                raise ValueError(f"unsupported rewrite source {source!r}")
            pattern += "/" + re.escape(segment)
            continue
        params.append(param.group(1))
        # The expressions `vercel build` writes into .vercel/output/config.json.
        if param.group(2):
            pattern += r"(?:/((?:[^/]+?)(?:/(?:[^/]+?))*))?"
        else:
            pattern += r"(?:/([^/]+?))"
    path, _, query = destination.partition("?")
    if ":" in destination or not (ROOT / f"{path.lstrip('/')}.py").is_file():
        raise ValueError(f"unsupported rewrite destination {destination!r}")
    return Rewrite(re.compile(f"^{pattern}$"), tuple(params), path, tuple(parse_qsl(query)))


def load_rewrites(vercel_json: Path = VERCEL_JSON) -> list[Rewrite]:
    """The rewrites of `vercel.json`, in order."""
    config = json.loads(vercel_json.read_text())
    return [compile_rewrite(r["source"], r["destination"]) for r in config.get("rewrites", [])]
