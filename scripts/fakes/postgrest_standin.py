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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from flask import Flask, Response, current_app, request
from psycopg import sql
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.serving import make_server

from scripts.fakes.pacing import ENV_DELAY, PACING, Paced

log = logging.getLogger("postgrest_standin")

EXTENSION = "postgrest_standin"
SCHEMA = "public"
_JSON = "application/json; charset=utf-8"
# Query parameters PostgREST reads itself on GET /rpc; everything else is an argument.
_RESERVED_QUERY = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})
_ROUTINES_SQL = """
select p.proname, p.proretset, p.prorettype = 'pg_catalog.void'::regtype, p.pronargdefaults,
       coalesce(p.proargnames, '{}'), coalesce(p.proargmodes::text[], '{}'),
       array(select format_type(t.oid, null)
             from unnest(p.proargtypes::oid[]) with ordinality as t(oid, n) order by t.n)
from pg_proc p
where p.pronamespace = %s::regnamespace and p.proname = %s and p.prokind = 'f'
order by p.oid
"""


@dataclass(frozen=True)
class Param:
    """One input parameter of a SQL function."""

    name: str  # "" when unnamed
    type: str  # as format_type() prints it, usable in a cast
    variadic: bool = False


@dataclass(frozen=True)
class Routine:
    """One overload of a function in the exposed schema, as PostgREST's schema cache holds it."""

    name: str
    params: tuple[Param, ...]
    required: int  # the leading parameters without a default
    returns_set: bool
    returns_void: bool

    def accepts(self, keys: set[str]) -> bool:
        """Whether named arguments `keys` cover every required parameter and nothing unknown."""
        names = {p.name for p in self.params}
        needed = {p.name for p in self.params[: self.required]}
        return "" not in needed and keys <= names and needed <= keys

    def takes_whole_body(self) -> bool:
        only = self.params[0] if len(self.params) == 1 else None
        return only is not None and not only.name and only.type in ("json", "jsonb")

    def signature(self) -> str:
        args = ", ".join(f"{p.name} => {p.type}" for p in self.params)
        return f"{SCHEMA}.{self.name}({args})"


class RpcError(Exception):
    """A PostgREST-style error answer."""

    def __init__(
        self, status: int, code: str, message: str, details: str | None = None,
        hint: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint


@dataclass
class _State:
    pool: ConnectionPool
    key: str
    db_role: str | None
    claims: str
    routines: dict[str, tuple[Routine, ...]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    app.extensions[EXTENSION] = _State(pool, service_role_key, db_role, json.dumps(claims))
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


def _state() -> _State:
    state: _State = current_app.extensions[EXTENSION]
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


def _authenticate(state: _State) -> None:
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
        routine = _resolve(state, fn, args)
        result = _call(state, routine, args, read_only=request.method in ("GET", "HEAD"))
    except psycopg.Error as exc:
        if exc.sqlstate == "42883":
            # The function changed under the cache; the next call reads pg_proc again.
            with state.lock:
                state.routines.pop(fn, None)
        raise _sql_error(exc) from exc
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


def _routines(state: _State, fn: str, *, refresh: bool) -> tuple[tuple[Routine, ...], bool]:
    """The overloads of `public.<fn>` and whether they were just read from pg_proc.

    The cache is used unless `refresh` or nothing is cached yet; a missing function is never
    cached, so one created later is found without a reload.
    """
    with state.lock:
        cached = state.routines.get(fn)
    if cached is not None and not refresh:
        return cached, False
    with state.pool.connection() as conn:
        rows = conn.execute(_ROUTINES_SQL, (SCHEMA, fn)).fetchall()
    found = tuple(_routine(*row) for row in rows)
    with state.lock:
        if found:
            state.routines[fn] = found
        else:
            state.routines.pop(fn, None)
    return found, True


def _routine(
    name: str, retset: bool, void: bool, ndefaults: int, names: list[str], modes: list[str],
    types: list[str],
) -> Routine:  # fmt: skip
    # proargnames and proargmodes also list OUT/TABLE columns; proargtypes only the inputs.
    modes = modes or ["i"] * len(types)
    inputs = [(names[i] if i < len(names) else "", m) for i, m in enumerate(modes) if m in "ibv"]
    params = tuple(
        Param(name=n, type=t, variadic=m == "v") for (n, m), t in zip(inputs, types, strict=True)
    )
    return Routine(name, params, len(params) - ndefaults, retset, void)


def _resolve(state: _State, fn: str, args: dict[str, Any]) -> Routine:
    """Pick the overload PostgREST would call for these named arguments.

    Raises RpcError 404 PGRST202 when none fits, 300 PGRST203 when several do.
    """
    keys = set(args)
    routines, fresh = _routines(state, fn, refresh=False)
    found = _pick(routines, keys)
    if found is None and not fresh:
        # The cache may predate a changed signature (PostgREST would need a schema reload).
        routines, _ = _routines(state, fn, refresh=True)
        found = _pick(routines, keys)
    if found is not None:
        return found
    names = ", ".join(sorted(keys))
    searched = f" with parameter{'s' if len(keys) > 1 else ''} {names}" if keys else ""
    known = routines and ", ".join(sorted(p.name for p in routines[0].params))
    raise RpcError(
        404, "PGRST202",
        f"Could not find the function {SCHEMA}.{fn}({names}) in the schema cache",
        details=f"Searched for the function {SCHEMA}.{fn}{searched} or with a single unnamed "
        "json/jsonb parameter, but no matches were found in the schema cache.",
        hint=f"Perhaps you meant to call the function {SCHEMA}.{fn}({known})" if routines else None,
    )  # fmt: skip


def _pick(routines: tuple[Routine, ...], keys: set[str]) -> Routine | None:
    matches = [r for r in routines if r.accepts(keys)]
    matches = matches or [r for r in routines if r.takes_whole_body()]
    if len(matches) > 1:
        raise RpcError(
            300, "PGRST203",
            "Could not choose the best candidate function between: "
            + ", ".join(r.signature() for r in matches),
            hint="Try renaming the parameters or the function itself in the database so "
            "function overloading can be resolved",
        )  # fmt: skip
    return matches[0] if matches else None


def _call(state: _State, routine: Routine, args: dict[str, Any], *, read_only: bool) -> str:
    """Run the function in its own transaction; returns the result as JSON text."""
    function = sql.Identifier(SCHEMA, routine.name)
    if routine.takes_whole_body() and not routine.accepts(set(args)):
        params: list[Any] = [_adapt(routine.params[0], args)]
        call = sql.SQL("{}({}::{})").format(
            function, sql.Placeholder(), sql.SQL(routine.params[0].type)
        )
    else:
        given = [p for p in routine.params if p.name in args]
        params = [_adapt(p, args[p.name]) for p in given]
        call = sql.SQL("{}({})").format(
            function,
            sql.SQL(", ").join(
                sql.SQL("{}{} => {}::{}").format(
                    sql.SQL("variadic " if p.variadic else ""),
                    sql.Identifier(p.name),
                    sql.Placeholder(),
                    sql.SQL(p.type),  # from format_type(), so already a valid type name
                )
                for p in given
            ),
        )
    if routine.returns_void:
        query = sql.SQL("select {}").format(call)
    elif routine.returns_set:
        query = sql.SQL("select coalesce(json_agg(_r), '[]')::text from {} as _r").format(call)
    else:
        query = sql.SQL("select to_json(_r)::text from {} as _r").format(call)
    with state.pool.connection() as conn, conn.transaction():
        if read_only:
            conn.execute("set transaction read only")
        # What PostgREST sets per request: the claims, then the role to run as.
        conn.execute(
            "select set_config('request.jwt.claims', %s, true),"
            " set_config('request.method', %s, true)",
            (state.claims, request.method),
        )
        if state.db_role:
            conn.execute("select set_config('role', %s, true)", (state.db_role,))
        row = conn.execute(query, params).fetchone()
    text = row[0] if row else None
    return "null" if text is None else str(text)


def _adapt(param: Param, value: Any) -> Any:
    """A JSON argument value as a query parameter for `param`; the SQL casts it to the type."""
    if value is None:
        return None
    if param.type == "jsonb":
        return Jsonb(value)
    if param.type == "json":
        return Json(value)
    if isinstance(value, dict) or (isinstance(value, list) and not param.type.endswith("]")):
        # Postgres parses the JSON text into the parameter's type, as json_to_record would.
        return json.dumps(value)
    return value


def _sql_error(exc: psycopg.Error) -> RpcError:
    diag = exc.diag
    code = exc.sqlstate
    if code is None:
        return RpcError(503, "PGRST000", "Database connection error", details=str(exc))
    message = diag.message_primary or str(exc)
    return RpcError(_status(code), code, message, diag.message_detail, diag.message_hint)


# SQLSTATE → HTTP status, most specific first (PostgREST's documented table; 42501 is 403
# because a service-role caller is authenticated). Anything else is 400.
_STATUS_BY_CODE = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400,
                   "42883": 404, "42P01": 404, "42P17": 500, "42501": 403}  # fmt: skip
_STATUS_BY_CLASS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
                    "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
                    "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}  # fmt: skip


def _status(sqlstate: str) -> int:
    if sqlstate in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[sqlstate]
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])
    return _STATUS_BY_CLASS.get(sqlstate[:2], 400)


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
