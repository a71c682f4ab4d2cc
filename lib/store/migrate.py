"""Apply `supabase/migrations/*.sql` to a Postgres database, in order, once each.

On plain Postgres (tests, the embedded dev database) `supabase/bootstrap/plain_postgres.sql` first
creates what Supabase provides out of the box (the `auth` schema, its roles and `auth.uid()`), so
the migrations apply unchanged everywhere. Applied versions are recorded in
`supabase_migrations.schema_migrations`, the table the Supabase CLI uses.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2] / "supabase"
MIGRATIONS = ROOT / "migrations"
BOOTSTRAP = ROOT / "bootstrap" / "plain_postgres.sql"

_LOCK_ID = 7_403_221  # any constant: serialises concurrent migrators on one database


def apply(database_url: str) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied now.

    Raises psycopg.Error when a migration fails; that migration's changes are rolled back.
    """
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            has_auth = conn.execute(
                "select exists(select 1 from pg_namespace where nspname = 'auth')"
            ).fetchone()
            if not (has_auth and has_auth[0]):
                conn.execute(BOOTSTRAP.read_text())  # type: ignore[arg-type]
            conn.execute(
                "create schema if not exists supabase_migrations;"
                "create table if not exists supabase_migrations.schema_migrations"
                " (version text primary key, statements text[], name text)"
            )
            done = {
                row[0]
                for row in conn.execute("select version from supabase_migrations.schema_migrations")
            }
            for path in sorted(MIGRATIONS.glob("*.sql")):
                version, _, name = path.stem.partition("_")
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())  # type: ignore[arg-type]
                    conn.execute(
                        "insert into supabase_migrations.schema_migrations (version, name)"
                        " values (%s, %s)",
                        (version, name),
                    )
                applied_now.append(version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
