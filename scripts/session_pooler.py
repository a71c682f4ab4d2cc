"""A Postgres login role capped like Supabase's session pooler, for the `cloud` stack profile.

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

# The smallest session pooler's client cap. The worker's own connection cap, across all its
# processes, must fit under it (docs/deploy.md); the cloud profile enforces it on the server.
SESSION_POOLER_CLIENTS = 15
ROLE = "cs_session_pooler"
# Local stacks only: this role exists on the developer's own (often trust-auth) Postgres.
PASSWORD = "cs-session-pooler-local"  # noqa: S105


def capped_role_url(database_url: str, clients: int = SESSION_POOLER_CLIENTS) -> str:
    """Create (or update) the capped role on the server of `database_url` and return the same
    URL logged in as it. The role inherits the privileges of the URL's own user, the owner of
    the migrated schema, but not superuser status: Postgres exempts superusers from the cap.

    Raises psycopg.Error when that user may not create roles."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        owner = conn.execute("select current_user").fetchone()
        assert owner is not None
        exists = conn.execute("select 1 from pg_roles where rolname = %s", [ROLE]).fetchone()
        if not exists:
            conn.execute(sql.SQL("create role {} login").format(sql.Identifier(ROLE)))
        conn.execute(
            sql.SQL("alter role {} nosuperuser login connection limit {} password {}").format(
                sql.Identifier(ROLE), sql.Literal(clients), sql.Literal(PASSWORD)
            )
        )
        conn.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(owner[0]), sql.Identifier(ROLE))
        )
    return make_conninfo(database_url, user=ROLE, password=PASSWORD)
