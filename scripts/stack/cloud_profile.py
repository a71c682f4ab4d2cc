"""What makes the `cloud` stack profile (scripts/stack/devstack.py): each part as in production.

- The producer as on Vercel: Redis through the Upstash REST adapter and the store through
  supabase-py, each by way of its stand-in (scripts/fakes/upstash_standin.py,
  scripts/fakes/postgrest_standin.py) in front of the stack's real servers.
- The worker as on the VPS: TCP Redis, and psycopg logged in as a role capped like Supabase's
  session pooler.

Supabase's session pooler (Supavisor, port 5432) caps its clients at the "Pool Size" setting,
15 on the small plans, for each role and database: "If there are 16 connection attempts, only
the first 15 will be accepted"; the 16th waits up to a minute in the pooler, then fails with
"Max client connections reached" (github.com/supabase/supabase discussion #22305). A role's
CONNECTION LIMIT makes the real Postgres refuse the same client ("too many connections for
role"), at once rather than after that minute, so a worker that opens more clients than the
pooler allows meets the refusal here, not first in production.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

# The stand-ins' credentials (local only, like the dev QStash token).
UPSTASH_TOKEN = "devstack-upstash-token"  # noqa: S105
# The Supabase CLI's local service-role key: a JWT signed with the public dev secret.
SERVICE_ROLE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UtZ"
    "GVtbyIsImV4cCI6MTk4MzgxMjk5Nn0.VkcJ801Bd30muD6WhyO-U6YR4hiCG96YZmkBFWN3QqI"
)

# The smallest session pooler's client cap. The worker's own connection cap, across all its
# processes, must fit under it; the cloud profile enforces this one on the server.
SESSION_POOLER_CLIENTS = 15
ROLE = "cs_session_pooler"
# Local stacks only: this role exists on the developer's own (often trust-auth) Postgres.
PASSWORD = "cs-session-pooler-local"  # noqa: S105


def capped_role_url(database_url: str, clients: int = SESSION_POOLER_CLIENTS) -> str:
    """Create (or update) the capped role on the server of `database_url` and return the same
    URL logged in as it. The role inherits the privileges of the URL's own user, the owner of
    the migrated schema, but not superuser status: Postgres exempts superusers from the cap.

    Raises RuntimeError when that user may not create roles."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            (owner,) = conn.execute("select current_user").fetchone() or ("",)
            exists = conn.execute("select 1 from pg_roles where rolname = %s", [ROLE]).fetchone()
            if not exists:
                conn.execute(sql.SQL("create role {} login").format(sql.Identifier(ROLE)))
            conn.execute(
                sql.SQL("alter role {} login connection limit {} password {}").format(
                    sql.Identifier(ROLE), sql.Literal(clients), sql.Literal(PASSWORD)
                )
            )
            conn.execute(
                sql.SQL("grant {} to {}").format(sql.Identifier(owner), sql.Identifier(ROLE))
            )
    except psycopg.Error as exc:
        raise RuntimeError(
            f"the cloud profile logs the worker in as the role {ROLE}, and DATABASE_URL's user "
            f"could not set it up ({exc.sqlstate}: {str(exc).strip()})"
        ) from exc
    return make_conninfo(database_url, user=ROLE, password=PASSWORD)


def producer_env(upstash_url: str, postgrest_url: str) -> dict[str, str]:
    """The producer's services, as on Vercel: Upstash REST and supabase-py, each through its
    stand-in. The TCP URLs are blanked, not dropped, so that `.env` cannot refill them."""
    return {
        "REDIS_URL": "",
        "DATABASE_URL": "",
        "UPSTASH_REDIS_REST_URL": upstash_url,
        "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN,
        "SUPABASE_URL": postgrest_url,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
        "STORE_BACKEND": "supabase",
    }


def worker_env(database_url: str) -> dict[str, str]:
    """The worker, as on the VPS: TCP Redis, and psycopg logged in as the role capped at
    SESSION_POOLER_CLIENTS. A worker-side connection cap belongs here too, set to fit under it."""
    return {
        "UPSTASH_REDIS_REST_URL": "",
        "DATABASE_URL": capped_role_url(database_url, SESSION_POOLER_CLIENTS),
        "STORE_BACKEND": "postgres",
    }
