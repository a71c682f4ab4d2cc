"""One WSGI app serving every Vercel function at the path Vercel gives it (local runs on :3000).

The routing mirrors `vercel.json`: the first matching prefix pattern picks the function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from api import events, health, jobs, me

ROUTES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"^/api/jobs/[^/]+/events/?$"), events.app),
    (re.compile(r"^/api/jobs(/.*)?$"), jobs.app),
    (re.compile(r"^/api/me/?$"), me.app),
    (re.compile(r"^/api/health/?$"), health.app),
]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    for pattern, target in ROUTES:
        if pattern.match(path):
            return target(environ, start_response)  # type: ignore[no-any-return]
    return health.app(environ, start_response)  # type: ignore[no-any-return]
