"""A real PgBouncer in transaction mode in front of the test Postgres (tests/test_pgbouncer.py).

Supabase's transaction pooler (port 6543) pools the same way: each transaction may get another
server connection. PgBouncer comes from Debian (`scripts/install-pgbouncer`, run here when it is
missing); it refuses to run as root, so as root it runs as the owner of the database's socket
folder (the embedded server's `pgserver` user) or as `nobody` for a TCP database.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from helpers.net import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def binary() -> str:
    """PgBouncer's path, installed from Debian's packages first when it is missing."""
    for found in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):  # Debian's is in sbin
        if found and os.access(found, os.X_OK):
            return found
    out = subprocess.run(  # noqa: S603
        [str(ROOT / "scripts" / "install-pgbouncer")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, f"scripts/install-pgbouncer failed: {out.stderr[-2000:]}"
    return out.stdout.strip().splitlines()[-1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def transaction_pooler(database_url: str, pool_size: int = 1) -> Iterator[str]:
    """Start PgBouncer in transaction mode with `pool_size` server connections per database and
    user; yields `database_url` rewritten to go through it."""
    info = conninfo_to_dict(database_url)
    host = str(info.get("host") or "127.0.0.1")
    user = str(info.get("user") or "postgres")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="cs-pgbouncer-"))
    folder.chmod(0o755)  # readable by the user PgBouncer switches to
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={info.get('port') or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 100\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    command = [binary()]
    if os.geteuid() == 0:  # "PgBouncer should not run as root"
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        command += ["-u", owner]
    log = (folder / "pgbouncer.log").open("w")
    proc = subprocess.Popen([*command, str(folder / "pgbouncer.ini")], stdout=log, stderr=log)  # noqa: S603
    try:
        wait_for(lambda: _accepts(port) or proc.poll() is not None, timeout=10, what="pgbouncer")
        assert proc.poll() is None, (folder / "pgbouncer.log").read_text()[-2000:]
        yield make_conninfo(**{**info, "host": "127.0.0.1", "port": str(port)})
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
