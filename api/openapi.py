"""Vercel function: the OpenAPI document (`/api/openapi.json`) and its docs page (`/api/docs`).

The page is Swagger UI, whose files come from the `flask-swagger-ui` package (Swagger UI 5,
which reads OpenAPI 3.1) and are served under `/api/docs/`, so the docs need no CDN. The page
has no inline script: its start-up code is `/api/docs/init.js`.

When Vercel routes with the rewritten path (see api/_local.py), the same requests arrive as
`/api/openapi` (the document) and `/api/openapi?page=docs&path=<file>` (the page and its files).
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Response, request, send_from_directory

from api._common import create_app
from lib.errors import NotFoundError

DOCUMENT = Path(__file__).with_name("_openapi.json")
ASSETS = Path(flask_swagger_ui.__file__).with_name("dist")
ASSET_FILES = frozenset(
    {
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>CareerShaper Jobs API</title>
  <link rel="stylesheet" href="/api/docs/swagger-ui.css">
  <link rel="stylesheet" href="/api/docs/index.css">
  <link rel="icon" type="image/png" href="/api/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <main id="swagger-ui"></main>
  <script src="/api/docs/swagger-ui-bundle.js"></script>
  <script src="/api/docs/swagger-ui-standalone-preset.js"></script>
  <script src="/api/docs/init.js"></script>
</body>
</html>
"""

INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
  });
});
"""

app = create_app(__name__)


@app.get("/api/openapi")
def rewritten() -> Response:
    if request.args.get("page") != "docs":
        return document()
    name = request.args.get("path", "")
    if not name:
        return docs()
    return init() if name == "init.js" else asset(name)


@app.get("/api/openapi.json")
def document() -> Response:
    return Response(
        DOCUMENT.read_bytes(),
        mimetype="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )


@app.get("/api/docs")
@app.get("/api/docs/")
def docs() -> Response:
    return Response(PAGE, mimetype="text/html")


@app.get("/api/docs/init.js")
def init() -> Response:
    return Response(INIT, mimetype="text/javascript")


@app.get("/api/docs/<name>")
def asset(name: str) -> Response:
    if name not in ASSET_FILES:
        raise NotFoundError("no such file")
    return send_from_directory(ASSETS, name, max_age=86400)
