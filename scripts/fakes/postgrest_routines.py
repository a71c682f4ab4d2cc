"""The PostgREST stand-in's schema cache: the overloads of each `public.<fn>` read from pg_proc
(`Routine`), and the one PostgREST would call for a request's named arguments (`resolve`).
Also the app's state, which holds the cache, and PostgREST's error answer (`RpcError`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

SCHEMA = "public"
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
class RpcState:
    """The app's state (in `app.extensions`): the pool, the key and the schema cache."""

    pool: ConnectionPool
    key: str
    db_role: str | None
    claims: str
    routines: dict[str, tuple[Routine, ...]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _routines(state: RpcState, fn: str, *, refresh: bool) -> tuple[tuple[Routine, ...], bool]:
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


def resolve(state: RpcState, fn: str, args: dict[str, Any]) -> Routine:
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
