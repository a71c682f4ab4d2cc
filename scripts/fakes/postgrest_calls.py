"""The PostgREST stand-in's calls: one SQL function in its own transaction, as PostgREST runs
it for a service-role key, and a Postgres error as PostgREST's answer (its status mapping)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from flask import request
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from scripts.fakes.postgrest_routines import SCHEMA, Param, Routine, RpcError, RpcState


def call_routine(
    state: RpcState, routine: Routine, args: dict[str, Any], *, read_only: bool
) -> str:
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


def sql_error(exc: psycopg.Error) -> RpcError:
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
