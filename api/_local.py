"""One WSGI app serving every Vercel function at the path Vercel gives it (local runs on :3000).

Routing follows Vercel's for this project, read from `vercel.json` rather than restated here:
a path `/api/<name>` is the function `api/<name>.py` (the filesystem comes first); otherwise the
first matching rewrite picks the function, compiled as `vercel build` compiles it
(api/_rewrites.py: `/api/jobs/:id/events` -> `/api/events?id=<id>`).

A function then sees one of two paths, and the handlers answer both:
- `app`: the request's original path, with the rewrite's parameters merged into its query, as
  plain Vercel functions and `vercel dev` invoke them;
- `rewritten_app`: the rewritten path (`/api/events?id=<id>&...`), as `vercel build` warns that
  backend-framework projects now route internal rewrites. `make dev PROFILE=cloud` serves this.

Paths outside `/api/` are the static files of `public/`, as Vercel serves them (`/` is
`index.html`). `/api/dev/...` is the local-only token minter (kept out of deployments).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from api import dev, events, health, jobs, me, openapi, reconcile, uploads
from api._common import http_error, secure
from api._rewrites import Rewrite, load_rewrites

PUBLIC = Path(__file__).resolve().parents[1] / "public"

Wsgi = Callable[..., Iterable[bytes]]

# api/<name>.py -> its WSGI app: the functions `vercel build` produces (scripts/check-deploy).
FUNCTIONS: dict[str, Wsgi] = {
    "/api/jobs": jobs.app,
    "/api/events": events.app,
    "/api/me": me.app,
    "/api/health": health.app,
    "/api/openapi": openapi.app,
    "/api/reconcile": reconcile.app,
    "/api/uploads": uploads.app,
}
_DEV = re.compile(r"^/api/dev(/.*)?$")


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


def router(*, rewritten_path: bool, rewrites: list[Rewrite] | None = None) -> Wsgi:
    """A WSGI app routing as Vercel does; `rewritten_path` picks the path a function sees."""
    table = load_rewrites() if rewrites is None else rewrites

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        function = FUNCTIONS.get(path)
        if function is not None:
            return function(environ, start_response)
        if _DEV.match(path):
            return dev.app(environ, start_response)  # type: ignore[no-any-return]
        for rewrite in table:
            applied = rewrite.apply(path)
            if applied is None:
                continue
            destination, params = applied
            # The rewrite's parameters come first, so a client's own `?id=` cannot replace them.
            query = urlencode(params)
            if environ.get("QUERY_STRING"):
                query = f"{query}&{environ['QUERY_STRING']}" if query else environ["QUERY_STRING"]
            routed = {**environ, "QUERY_STRING": query}
            if rewritten_path:
                routed["PATH_INFO"] = destination
            return FUNCTIONS[destination](routed, start_response)
        if not path.startswith("/api/"):
            return static(environ, start_response)  # type: ignore[no-any-return]
        # Vercel answers 404 here; the health function gives it the SPEC's error shape.
        return health.app(environ, start_response)  # type: ignore[no-any-return]

    return route


app = router(rewritten_path=False)
rewritten_app = router(rewritten_path=True)
