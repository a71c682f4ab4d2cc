"""The SQL's privileges on a real Postgres with Supabase's roles and default privileges (issue 11,
item 9): what `anon` and `authenticated` (the data API's roles, which any browser holds) may do
with the project's `cs_` objects, now and after a later migration, and that nobody else's
objects are touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lib.store import migrate

# What a Supabase project grants by default on new objects in `public`: ALL to anon,
# authenticated and service_role, for objects created by `postgres` (supabase/postgres,
# migrations/db/init-scripts/00000000000000-initial-schema.sql). Plain Postgres has only the
# roles (supabase/bootstrap/plain_postgres.sql), so the test adds these.
SUPABASE_DEFAULT_PRIVILEGES = "".join(
    f"alter default privileges in schema public grant all on {kind}"
    " to anon, authenticated, service_role;"
    for kind in ("tables", "functions", "sequences")
)

# A later migration, written without a thought for privileges: one object of ours of each kind,
# and the front end's own.
LATER_MIGRATION = """
create function public.cs_later(p integer) returns integer language sql as $$ select p $$;
create table public.cs_later_table (id bigint generated always as identity, note text);
create function public.frontend_later() returns integer language sql as $$ select 1 $$;
create table public.frontend_table (id integer);
"""

API_ROLES = ("anon", "authenticated")
WRITES = ("insert", "update", "delete", "truncate")


@pytest.fixture
def supabase_like(database_url: str) -> Iterator[str]:
    """A new database on the test server, set up as a Supabase project is before migrations."""
    name = f"cs_priv_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = make_conninfo(**{**conninfo_to_dict(database_url), "dbname": name})
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(migrate.BOOTSTRAP.read_text())  # type: ignore[arg-type]
            conn.execute(SUPABASE_DEFAULT_PRIVILEGES)  # type: ignore[arg-type]
        yield url
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def may(url: str, role: str, privilege: str, obj: str, kind: str = "function") -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            f"select has_{kind}_privilege(%s, %s, %s)", (role, obj, privilege)
        ).fetchone()
    assert row is not None
    return bool(row[0])


def cs_functions(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select p.oid::regprocedure::text from pg_proc p"
            " where p.pronamespace = 'public'::regnamespace and p.proname like 'cs\\_%'"
        ).fetchall()
    return [row[0] for row in rows]


def cs_tables(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "select c.oid::regclass::text from pg_class c where c.relkind = 'r'"
            " and c.relnamespace = 'public'::regnamespace and c.relname like 'cs\\_%'"
        ).fetchall()
    return [row[0] for row in rows]


def test_no_cs_function_is_executable_and_no_cs_table_writable_by_the_api_roles(
    supabase_like: str,
) -> None:
    migrate.apply(supabase_like)
    functions, tables = cs_functions(supabase_like), cs_tables(supabase_like)
    assert "cs_submit(uuid,uuid,text,text,integer,jsonb,text,text,integer,integer)" in functions
    assert "cs_jobs" in tables
    for fn in functions:
        for role in API_ROLES:
            assert not may(supabase_like, role, "execute", fn), (role, fn)
        assert may(supabase_like, "service_role", "execute", fn), fn
    for table in tables:
        for role in API_ROLES:
            for write in WRITES:
                assert not may(supabase_like, role, write, table, "table"), (role, write, table)
        assert not may(supabase_like, "anon", "select", table, "table"), table
        assert may(supabase_like, "service_role", "insert", table, "table"), table
    # The front end reads its own rows (row-level security) as before.
    assert may(supabase_like, "authenticated", "select", "cs_jobs", "table")


def test_a_later_migration_leaves_its_cs_objects_closed_and_the_front_ends_open(
    supabase_like: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for path in sorted(migrate.MIGRATIONS.glob("*.sql")):
        (migrations / path.name).write_text(path.read_text())
    (migrations / "29991231000000_later.sql").write_text(LATER_MIGRATION)
    monkeypatch.setattr(migrate, "MIGRATIONS", migrations)
    assert "29991231000000" in migrate.apply(supabase_like)

    for role in API_ROLES:
        assert not may(supabase_like, role, "execute", "public.cs_later(integer)"), role
        for write in WRITES:
            assert not may(supabase_like, role, write, "public.cs_later_table", "table"), role
        assert not may(supabase_like, role, "usage", "public.cs_later_table_id_seq", "sequence")
        # Nobody else's objects are touched: Supabase's defaults stand.
        assert may(supabase_like, role, "execute", "public.frontend_later()"), role
        assert may(supabase_like, role, "insert", "public.frontend_table", "table"), role
    assert may(supabase_like, "service_role", "execute", "public.cs_later(integer)")
    assert may(supabase_like, "service_role", "insert", "public.cs_later_table", "table")


def test_the_functions_of_a_migration_the_store_runs_as_the_service_role_still_work(
    supabase_like: str,
) -> None:
    migrate.apply(supabase_like)
    user = str(uuid.uuid4())
    with psycopg.connect(supabase_like, autocommit=True) as conn:
        conn.execute("set role service_role")
        row = conn.execute("select public.cs_me(%s, 5, 3)", (user,)).fetchone()
        assert row is not None and row[0]["coins"] == 5
        conn.execute("set role authenticated")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select public.cs_me(%s, 5, 3)", (user,))
