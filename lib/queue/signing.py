"""QStash request signatures: the one place that knows the `Upstash-Signature` format.

QStash signs every delivery with an HS256 JWT whose claims are `iss=Upstash`, `sub=<destination
URL>`, `exp`, `nbf`, `iat`, `jti` and `body=base64url(sha256(raw body))`. The dev broker and the
`QSTASH_MODE=direct` passthrough sign with `sign`; the worker verifies with `lib.queue.receiver`.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

# Official QStash dev server defaults (`qstash dev`), shared by our dev broker.
DEV_TOKEN = "eyJVc2VySUQiOiJkZWZhdWx0VXNlciIsIlBhc3N3b3JkIjoiZGVmYXVsdFBhc3N3b3JkIn0="  # noqa: S105
DEV_CURRENT_SIGNING_KEY = "sig_7kYjw48mhY7kAjqNGcy6cr29RJ6r"
DEV_NEXT_SIGNING_KEY = "sig_5ZB6DVzB1wjE8S6rZ7eenA8Pdnhs"

SIGNATURE_TTL_SECONDS = 300


def body_hash(body: bytes) -> str:
    """Return base64url(sha256(body)) without padding, as the `body` claim carries it."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode().rstrip("=")


def sign(key: str, url: str, body: bytes, *, now: float | None = None) -> str:
    """Return an `Upstash-Signature` JWT for delivering `body` to `url`, valid for 5 minutes."""
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": "Upstash",
        "sub": url,
        "exp": issued + SIGNATURE_TTL_SECONDS,
        "nbf": issued,
        "iat": issued,
        "jti": f"jwt_{uuid.uuid4().hex}",
        "body": body_hash(body),
    }
    import jwt  # here: lib.config imports the dev values above, and a cold api/ must not load PyJWT

    return jwt.encode(claims, key, algorithm="HS256")
