"""PostgREST stand-in for `/rest/v1/rpc/<fn>`: calls the same SQL function on a real Postgres.

`supabase.create_client(url, key).rpc(fn, params).execute()` works against it unchanged. It does
what PostgREST does for a function call (https://docs.postgrest.org/en/latest/references/api/functions.html):

- The JSON object body holds named arguments. The overload of `public.<fn>` whose parameters cover
  the given names (parameters with defaults may be left out) is called with named notation;
  a function with a single unnamed json/jsonb parameter receives the whole body. `GET` passes
  the arguments as query parameters, in a read-only transaction.
- Each call is its own transaction, run as `service_role` with `request.jwt.claims` set, as
  PostgREST does for a service-role key.
- A scalar result is a JSON scalar, a composite result an object, a set-returning function an
  array of rows, and `returns void` answers 204 with no body.
- Errors are PostgREST's JSON `{"code", "message", "details", "hint"}` with its status mapping
  (https://docs.postgrest.org/en/latest/references/errors.html): P0001 → 400, 23505 → 409,
  `PTxyz` → xyz, an unknown function or argument → 404 PGRST202, and so on.

The `apikey` header or `Authorization: Bearer` must carry the service-role key. Argument values
are never logged.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import psycopg
from flask import Flask, Response, current_app, request
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.serving import make_server

from scripts.fakes.pacing import ENV_DELAY, PACING, Paced
from scripts.fakes.postgrest_calls import call_routine, sql_error
from scripts.fakes.postgrest_routines import SCHEMA, RpcError, RpcState, resolve

log = logging.getLogger("postgrest_standin")

EXTENSION = "postgrest_standin"
_JSON = "application/json; charset=utf-8"
# Query parameters PostgREST reads itself on GET /rpc; everything else is an argument.
_RESERVED_QUERY = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})


def create_app(
    database_url: str,
    service_role_key: str,
    *,
    db_role: str | None = "service_role",
    delay_ms: float = 0.0,
) -> Flask:
    """Build the stand-in for the Postgres at `database_url`, guarded by `service_role_key`.

    Each call runs as `db_role` (PostgREST switches to the role in the key's JWT); None keeps the
    connecting user. `delay_ms` is added to every request, as the distance to Supabase would be;
    `app.extensions["pacing"]` counts requests (scripts/fakes/pacing.py). Call `close(app)` to close
    the connection pool. Raises ValueError for an empty key.
    """
    if not service_role_key:
        raise ValueError("the stand-in needs a non-empty service-role key")
    pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=8,
        timeout=10,
        kwargs={"autocommit": True, "prepare_threshold": None},
        check=ConnectionPool.check_connection,
        name="postgrest-standin",
        open=True,
    )
    claims = _claims(service_role_key) or {"role": db_role or "service_role"}
    app = Flask(__name__)
    app.extensions[EXTENSION] = RpcState(pool, service_role_key, db_role, json.dumps(claims))
    app.register_error_handler(RpcError, _error_response)
    app.add_url_rule("/rest/v1/rpc/<fn>", view_func=_rpc, methods=["GET", "POST"])
    app.add_url_rule(
        "/rest/v1/rpc/<fn>", endpoint="_wrong_verb", view_func=_wrong_verb,
        methods=["PUT", "PATCH", "DELETE"],
    )  # fmt: skip
    app.extensions[PACING] = Paced(app.wsgi_app, delay_ms)
    app.wsgi_app = app.extensions[PACING]  # type: ignore[method-assign]
    return app


def close(app: Flask) -> None:
    """Close the stand-in's connection pool."""
    app.extensions[EXTENSION].pool.close()


def _state() -> RpcState:
    state: RpcState = current_app.extensions[EXTENSION]
    return state


def _claims(key: str) -> dict[str, Any] | None:
    """The payload of `key` when it is a JWT (Supabase keys are); its signature was not checked."""
    parts = key.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error_response(exc: RpcError) -> Response:
    body = {"code": exc.code, "details": exc.details, "hint": exc.hint, "message": exc.message}
    # Newer PostgREST names the error here too; postgrest-py reads it when there is no body.
    headers = {"Proxy-Status": f"PostgREST; error={exc.code}"}
    return Response(json.dumps(body), status=exc.status, content_type=_JSON, headers=headers)


def _authenticate(state: RpcState) -> None:
    supplied = [request.headers.get("apikey", "")]
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        supplied.append(header[len("Bearer ") :])
    supplied = [s for s in supplied if s]
    if not supplied:
        raise RpcError(
            401, "PGRST302", "No API key found in request",
            hint="No `apikey` request header or url param was found.",
        )  # fmt: skip
    if not any(hmac.compare_digest(s.encode(), state.key.encode()) for s in supplied):
        raise RpcError(
            401, "PGRST301", "Invalid API key",
            hint="Double check your Supabase `anon` or `service_role` API key.",
        )  # fmt: skip


def _wrong_verb(fn: str) -> Response:
    _authenticate(_state())
    raise RpcError(405, "PGRST101", f"Cannot use the {request.method} method on RPC")


def _rpc(fn: str) -> Response:
    state = _state()
    _authenticate(state)
    profile = request.headers.get("Content-Profile") or request.headers.get("Accept-Profile")
    if profile and profile != SCHEMA:
        raise RpcError(
            406, "PGRST106", f"Invalid schema: {profile}",
            hint=f"Only the following schemas are exposed: {SCHEMA}",
        )  # fmt: skip
    args = _arguments()
    try:
        routine = resolve(state, fn, args)
        result = call_routine(state, routine, args, read_only=request.method in ("GET", "HEAD"))
    except psycopg.Error as exc:
        if exc.sqlstate == "42883":
            # The function changed under the cache; the next call reads pg_proc again.
            with state.lock:
                state.routines.pop(fn, None)
        raise sql_error(exc) from exc
    except PoolTimeout as exc:
        raise RpcError(
            504, "PGRST003", "Timed out acquiring connection from connection pool."
        ) from exc
    log.debug("rpc %s ok", fn)
    if routine.returns_void:
        return Response(status=204)
    return Response(result, status=200, content_type=_JSON)


def _arguments() -> dict[str, Any]:
    if request.method in ("GET", "HEAD"):
        return {k: v for k, v in request.args.items() if k not in _RESERVED_QUERY}
    raw = request.get_data()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RpcError(400, "PGRST102", "Empty or invalid json")
    return body


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the stand-in until interrupted; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fakes.postgrest_standin",
        description="PostgREST stand-in serving POST /rest/v1/rpc/<fn> from a real Postgres.",
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--key", default=os.environ.get("SUPABASE_SERVICE_ROLE_KEY", ""))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8078)
    parser.add_argument(
        "--db-role",
        default="service_role",
        help="role each call runs as; empty keeps the login role",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=float(os.environ.get(ENV_DELAY) or 0),
        help=f"added to every request, like the distance to Supabase (default ${ENV_DELAY} or 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set --database-url or DATABASE_URL")
    if not args.key:
        parser.error("set --key or SUPABASE_SERVICE_ROLE_KEY")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(
        args.database_url, args.key, db_role=args.db_role or None, delay_ms=args.delay_ms
    )
    server = make_server(args.host, args.port, app, threaded=True)
    log.info("PostgREST stand-in on http://%s:%d/rest/v1", args.host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
        close(app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
