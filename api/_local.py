"""One WSGI app serving every Vercel function at the path Vercel gives it (local runs on :3000).

The routing mirrors `vercel.json`: the first matching prefix pattern picks the function. Paths
outside `/api/` are the static files of `public/`, as Vercel serves them (`/` is `index.html`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from api import dev, events, health, jobs, me, openapi
from api._common import http_error, secure

PUBLIC = Path(__file__).resolve().parents[1] / "public"

ROUTES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"^/api/jobs/[^/]+/events/?$"), events.app),
    (re.compile(r"^/api/jobs(/.*)?$"), jobs.app),
    (re.compile(r"^/api/me/?$"), me.app),
    (re.compile(r"^/api/health/?$"), health.app),
    (re.compile(r"^/api/(openapi\.json|docs(/.*)?)$"), openapi.app),
    (re.compile(r"^/api/dev(/.*)?$"), dev.app),
]


def _static_site() -> Flask:
    # send_static_file joins paths safely: `..` and absolute paths answer 404.
    site = Flask(__name__, static_folder=PUBLIC, static_url_path="")
    # As the API answers: the SPEC's error shape (not Flask's HTML) and the security headers.
    site.register_error_handler(HTTPException, http_error)
    site.after_request(secure)

    @site.get("/")
    def index() -> Response:
        return site.send_static_file("index.html")

    return site


static = _static_site()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    for pattern, target in ROUTES:
        if pattern.match(path):
            return target(environ, start_response)  # type: ignore[no-any-return]
    if not path.startswith("/api/"):
        return static(environ, start_response)  # type: ignore[no-any-return]
    return health.app(environ, start_response)  # type: ignore[no-any-return]
