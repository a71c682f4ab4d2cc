"""Verify QStash deliveries: both signing keys, body hash, `sub`, and a real clock tolerance.

We wrap `qstash.Receiver`'s building block rather than calling `Receiver.verify` as is, because in
qstash 3.4 its `clock_tolerance` is passed to PyJWT as an option that PyJWT ignores, and a token
without a `body` claim raises `KeyError` instead of `SignatureError`. Both are handled here and
covered by tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import jwt
from qstash.errors import SignatureError

from lib.queue.signing import body_hash


class InvalidSignature(Exception):
    """The delivery's `Upstash-Signature` does not verify with any configured key."""


def _verify_with_key(
    key: str, signature: str, body: bytes, url: str | None, clock_tolerance: int
) -> None:
    try:
        claims = jwt.decode(
            signature,
            key,
            algorithms=["HS256"],
            issuer="Upstash",
            leeway=clock_tolerance,
            options={"require": ["iss", "sub", "exp", "nbf", "body"]},
        )
    except jwt.PyJWTError as exc:
        raise SignatureError(str(exc)) from exc
    if url is not None and claims.get("sub") != url:
        raise SignatureError("signature was issued for another destination")
    claimed = claims.get("body")
    if not isinstance(claimed, str) or claimed.rstrip("=") != body_hash(body):
        raise SignatureError("body hash does not match")


def verify(
    signature: str | None,
    body: bytes,
    *,
    keys: Sequence[str],
    url: str | None,
    clock_tolerance: int = 30,
) -> None:
    """Return if `signature` verifies `body` for `url` with any of `keys` (current, then next).

    Raises InvalidSignature when the header is missing, malformed, expired beyond
    `clock_tolerance` seconds, not yet valid, for another `sub`, or for another body.
    """
    if not signature:
        raise InvalidSignature("missing Upstash-Signature header")
    reasons = []
    for key in keys:
        if not key:
            continue
        try:
            _verify_with_key(key, signature, body, url, clock_tolerance)
            return
        except SignatureError as exc:
            reasons.append(str(exc))
    raise InvalidSignature("; ".join(reasons) or "no signing key configured")
