"""Verify QStash deliveries: both signing keys, body hash, `sub`, and a real clock tolerance.

We wrap `qstash.Receiver`'s building block rather than calling `Receiver.verify` as is, because in
qstash 3.4 its `clock_tolerance` is passed to PyJWT as an option that PyJWT ignores, and a token
without a `body` claim raises `KeyError` instead of `SignatureError`. Both are handled here and
covered by tests.

The token is checked in two steps so the worker can refuse a forged request before it reads the
body: `verify_token` needs only the header (HMAC, `iss`, `sub`, `exp`/`nbf`, and the claims QStash
always sends), `verify_body` then compares the body's hash with the signed `body` claim. The
signature covers the body and the destination only, never the other headers (`Upstash-Retried`,
`Upstash-Message-Id`): nothing that matters may be decided from those.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jwt
from qstash.errors import SignatureError

from lib.queue.signing import body_hash

# A compact JWS (three base64url segments). A QStash signature is about 400 characters; anything
# much longer is refused unparsed.
MAX_SIGNATURE_CHARS = 4096
MAX_JTI_CHARS = 128
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidSignature(Exception):
    """The delivery's `Upstash-Signature` does not verify with any configured key."""


class Claims(NamedTuple):
    """What a verified signature says: its id, its expiry (epoch s) and the body's hash."""

    jti: str
    exp: int
    body: str


def _decode(key: str, signature: str, url: str | None, clock_tolerance: int) -> Claims:
    try:
        claims = jwt.decode(
            signature,
            key,
            algorithms=["HS256"],
            issuer="Upstash",
            leeway=clock_tolerance,
            options={"require": ["iss", "sub", "exp", "nbf", "jti", "body"]},
        )
    except jwt.PyJWTError as exc:
        raise SignatureError(str(exc)) from exc
    if url is not None and claims.get("sub") != url:
        raise SignatureError("signature was issued for another destination")
    jti, exp, claimed = claims.get("jti"), claims.get("exp"), claims.get("body")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
        raise SignatureError("malformed jti claim")
    if not isinstance(claimed, str):
        raise SignatureError("malformed body claim")
    return Claims(jti, int(exp), claimed)  # type: ignore[arg-type]


def well_formed(signature: str | None) -> bool:
    """Whether `signature` has the shape of a QStash signature (a compact JWS of sane size)."""
    return (
        bool(signature)
        and len(signature or "") <= MAX_SIGNATURE_CHARS
        and bool(_COMPACT_JWS.fullmatch(signature or ""))
    )


def verify_token(
    signature: str | None,
    *,
    keys: Sequence[str],
    url: str | None,
    clock_tolerance: int = 30,
) -> Claims:
    """Return the claims of `signature` if it verifies for `url` with any of `keys` (current,
    then next). The body is not needed: check it afterwards with `verify_body`.

    Raises InvalidSignature when the header is missing, malformed, expired beyond
    `clock_tolerance` seconds, not yet valid, for another `sub`, or lacks a claim QStash sends.
    """
    if not signature:
        raise InvalidSignature("missing Upstash-Signature header")
    if not well_formed(signature):
        raise InvalidSignature("malformed Upstash-Signature header")
    reasons = []
    for key in keys:
        if not key:
            continue
        try:
            return _decode(key, signature, url, clock_tolerance)
        except SignatureError as exc:
            reasons.append(str(exc))
    raise InvalidSignature("; ".join(reasons) or "no signing key configured")


def verify_body(claims: Claims, body: bytes) -> None:
    """Return if `body` is the body `claims` were signed for. Raises InvalidSignature otherwise."""
    if claims.body.rstrip("=") != body_hash(body):
        raise InvalidSignature("body hash does not match")


def verify(
    signature: str | None,
    body: bytes,
    *,
    keys: Sequence[str],
    url: str | None,
    clock_tolerance: int = 30,
) -> Claims:
    """`verify_token` then `verify_body`: return the claims if `signature` verifies `body`.

    Raises InvalidSignature as those two do.
    """
    claims = verify_token(signature, keys=keys, url=url, clock_tolerance=clock_tolerance)
    verify_body(claims, body)
    return claims


class Replayed(InvalidSignature):
    """A genuine signature whose `jti` was already accepted once: a replayed request."""


def verify_request(
    signature: str | None,
    read_body: Callable[[], bytes],
    *,
    keys: Sequence[str],
    url: str,
    clock_tolerance: int,
    first_use: Callable[[str, int], bool],
) -> bytes:
    """The body of a genuine, first-seen signed request to `url`.

    What needs no body is checked before `read_body` is called: the token (HMAC, issuer,
    destination, expiry). Then the body's hash, and last `first_use(jti, seconds)`, which must
    record the `jti` for as long as the token could still verify and say whether it was new.
    QStash signs each request anew ("with each request", upstash.com/docs/qstash/features/
    security), so only a replay repeats a `jti`. Raises InvalidSignature (Replayed for a replay),
    and whatever `read_body` and `first_use` raise (a body over its cap, Redis unavailable).
    """
    claims = verify_token(signature, keys=keys, url=url, clock_tolerance=clock_tolerance)
    body = read_body()
    verify_body(claims, body)
    if not first_use(claims.jti, claims.exp - int(time.time()) + clock_tolerance):
        raise Replayed("this Upstash-Signature was already used")
    return body
