"""The two ways to call the SQL functions: psycopg (direct) and supabase-py (PostgREST rpc).

Both expose one method, `call(fn, params)`, and return the function's JSON result, so the
`Store` above them is identical whichever is configured. Connection failures become
`UnavailableError`, so callers can answer 503 without knowing the backend.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from lib.errors import UnavailableError


class StoreBackend(Protocol):
    def call(self, fn: str, params: dict[str, Any]) -> Any:
        """Call `public.<fn>` with named arguments; return its JSON result."""

    def ping(self) -> None:
        """Return if the database answers; raise UnavailableError otherwise."""

    def close(self) -> None: ...


class PostgresBackend:
    """Direct connection through a psycopg pool (the worker, and local runs).

    The pool never holds more than `max_size` connections. `application_name` names them in
    `pg_stat_activity` unless DATABASE_URL sets its own. It prepares no statements, so it works
    through a transaction pooler too.
    """

    def __init__(
        self,
        database_url: str,
        *,
        max_size: int = 10,
        timeout: float = 5.0,
        application_name: str = "careershaper",
    ) -> None:
        from psycopg_pool import ConnectionPool

        self._timeout = timeout
        self._pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(timeout)),
                "fallback_application_name": application_name,
                # No server-side prepared statements: psycopg prepares a query after 5 runs, and
                # a transaction pooler (Supabase's port 6543, pgbouncer) hands the next
                # transaction another server connection, where that name is missing or taken
                # (tests/test_pgbouncer.py). Each call is one `select fn(...)`: nothing to save.
                "prepare_threshold": None,
            },
            open=False,
            check=ConnectionPool.check_connection,
        )
        self._opened = False
        self._lock = threading.Lock()
        self._signatures: dict[str, list[tuple[str, str]]] = {}

    def _open(self) -> None:
        if not self._opened:
            with self._lock:
                if not self._opened:
                    self._pool.open(wait=False)
                    self._opened = True

    def _signature(self, conn: Any, fn: str) -> list[tuple[str, str]]:
        # Cast every argument to its declared type, as PostgREST does, so Python ints and strs
        # resolve to exactly the function's parameters.
        if fn not in self._signatures:
            row = conn.execute(
                "select p.proargnames, array(select format_type(t, null)"
                " from unnest(p.proargtypes) t) from pg_proc p"
                " join pg_namespace n on n.oid = p.pronamespace"
                " where n.nspname = 'public' and p.proname = %s",
                (fn,),
            ).fetchone()
            if row is None:
                raise LookupError(f"no SQL function public.{fn}")
            self._signatures[fn] = list(zip(row[0] or [], row[1], strict=False))
        return self._signatures[fn]

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        import psycopg
        from psycopg.types.json import Jsonb

        self._open()
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                types = dict(self._signature(conn, fn))
                args = ", ".join(f"{name} => %({name})s::{types[name]}" for name in params)
                values = {
                    k: Jsonb(v) if types[k] in ("jsonb", "json") and v is not None else v
                    for k, v in params.items()
                }
                row = conn.execute(f"select public.{fn}({args})", values).fetchone()  # noqa: S608
        # psycopg_pool.PoolTimeout (pool exhausted or unreachable) is an OperationalError.
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown, TimeoutError) as exc:
            raise UnavailableError("the database is unavailable") from exc
        return row[0] if row else None

    def ping(self) -> None:
        import psycopg

        self._open()
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                conn.execute("select 1")
        except psycopg.Error as exc:  # psycopg_pool.PoolTimeout included
            raise UnavailableError("the database is unavailable") from exc

    def close(self) -> None:
        if self._opened:
            self._pool.close()


class SupabaseBackend:
    """Supabase's PostgREST through supabase-py's PostgREST client (serverless functions on
    Vercel).

    The store needs only `POST /rest/v1/rpc/<fn>`, so this builds the SDK's own
    `SyncPostgrestClient` the way `supabase.create_client(...).rpc` does (same URL, `apiKey`
    and bearer headers) without importing the auth, storage, realtime and functions clients:
    a cold start saves their import (about half of `import supabase`).
    """

    def __init__(self, url: str, service_role_key: str, *, timeout: float = 10.0) -> None:
        import httpx
        from postgrest import SyncPostgrestClient

        # No client-side retry: an rpc such as cs_submit_job must not run twice on a lost reply.
        self._client = SyncPostgrestClient(
            f"{url.rstrip('/')}/rest/v1",
            headers={"apiKey": service_role_key, "Authorization": f"Bearer {service_role_key}"},
            http_client=httpx.Client(timeout=httpx.Timeout(timeout, connect=3.0)),
            retry_enabled=False,
        )

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        try:
            response = self._client.rpc(fn, params).execute()
        except httpx.TransportError as exc:
            raise UnavailableError("the database is unavailable") from exc
        except APIError as exc:
            if str(exc.code or "").startswith(("5", "PGRST0")):
                raise UnavailableError("the database is unavailable") from exc
            raise
        return response.data

    def ping(self) -> None:
        self.call("cs_ping", {})

    def close(self) -> None:
        pass
