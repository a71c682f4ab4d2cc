"""Mint a dev token shaped like Supabase's: `python -m scripts.stack.mint_token [--user UUID]`.

Signed with SUPABASE_JWT_SECRET (the Supabase local default when unset). Dev and tests only.
"""

from __future__ import annotations

import argparse
import uuid

from lib import config
from lib.auth import mint_access_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default=None, help="user id (UUID); a new one by default")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args(argv)
    settings = config.load("any")
    secret = settings.supabase_jwt_secret or config.DEV_JWT_SECRET
    print(mint_access_token(args.user or str(uuid.uuid4()), secret, ttl=args.ttl))


if __name__ == "__main__":
    main()
