"""Supabase access tokens and our per-job stream tokens.

Access tokens are verified locally: HS256 with `SUPABASE_JWT_SECRET`, or ES256/RS256 against the
project's JWKS (cached). We require `aud=authenticated`, a valid `exp` and a UUID `sub`. The
algorithm is chosen by which key we have, never by the token: an HS256 token is only checked
with the shared secret and an asymmetric one only with JWKS keys, so `alg: none` and HS/RS
confusion are refused.

Stream tokens are ours, not Supabase's: they name their user in a claim of their own (`uid`, no
`sub`), carry no `role`, and have an audience and issuer Supabase never uses, so no Supabase
service reads one as a session even where both share a secret (development only: production
signs them with STREAM_TOKEN_SECRET, lib/config.py). They travel in URLs, so they are short-lived
(STREAM_TOKEN_TTL_SECONDS, 10 minutes by default) and scoped to one job, or (`scope: user`) to
the user's own stream of all their jobs; docs/security.md says where such URLs are logged.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt

from lib.errors import AuthError

ACCESS_AUDIENCE = "authenticated"
STREAM_AUDIENCE = "careershaper-stream"
STREAM_ISSUER = "careershaper-jobs"
USER_SCOPE = "user"  # a stream token for all of its user's jobs (`GET /api/events`)
ASYMMETRIC = ("ES256", "RS256")
LEEWAY_SECONDS = 30


def _uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise AuthError("the token's subject is not a user id") from None


@dataclass(frozen=True)
class Identity:
    """Who an access token names."""

    user_id: str
    # A Supabase anonymous sign-in (`is_anonymous: true`), or a `role` other than
    # `authenticated`: such users get no coins and no free jobs unless ALLOW_ANONYMOUS_USERS.
    anonymous: bool = False

    def may_hold_credit(self, allow_anonymous: bool) -> bool:
        """Whether this user is granted coins and free jobs."""
        return allow_anonymous or not self.anonymous


def _is_anonymous(claims: dict[str, Any]) -> bool:
    # Supabase anonymous users have role `authenticated` like permanent ones, and are told apart
    # by the `is_anonymous` claim (supabase.com/docs/guides/auth/auth-anonymous).
    return claims.get("is_anonymous") is True or claims.get("role") != ACCESS_AUDIENCE


class Verifier:
    """Verifies Supabase access tokens and mints/verifies stream tokens."""

    def __init__(
        self,
        *,
        jwt_secret: str = "",
        jwks_url: str = "",
        stream_secret: str = "",
        stream_ttl: int = 600,
    ) -> None:
        self.jwt_secret = jwt_secret
        self.jwks_url = jwks_url
        self.stream_secret = stream_secret
        self.stream_ttl = stream_ttl

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient:
        # The JWK Set is cached for 10 minutes; per-key caching is off because PyJWKClient's key
        # cache never expires, which would keep accepting a key the project has revoked.
        return jwt.PyJWKClient(
            self.jwks_url, cache_keys=False, cache_jwk_set=True, lifespan=600, timeout=5
        )

    def user_id(self, token: str) -> str:
        """Return the user id (`sub`) of a valid access token. Raises AuthError otherwise."""
        return self.identity(token).user_id

    def identity(self, token: str) -> Identity:
        """Return the user a valid access token names. Raises AuthError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed access token") from None
        alg = header.get("alg")
        try:
            if alg == "HS256" and self.jwt_secret:
                key: Any = self.jwt_secret
            elif alg in ASYMMETRIC and self.jwks_url:
                key = self._jwks.get_signing_key_from_jwt(token).key
            else:
                raise AuthError("unsupported token algorithm")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=ACCESS_AUDIENCE,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.PyJWKClientError:
            raise AuthError("unknown signing key") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("the access token has expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid access token") from None
        return Identity(_uuid(claims["sub"]), _is_anonymous(claims))

    def mint_stream_token(self, job_id: str, user_id: str, *, now: float | None = None) -> str:
        """A token that lets its holder stream one job's events until it expires."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": STREAM_ISSUER,
            "aud": STREAM_AUDIENCE,
            "uid": user_id,
            "job": job_id,
            "iat": issued,
            "exp": issued + self.stream_ttl,
        }
        return jwt.encode(claims, self.stream_secret, algorithm="HS256")

    def _stream_claims(self, token: str, scope_claim: str) -> dict[str, Any]:
        """The claims of a stream token signed with STREAM_TOKEN_SECRET, unexpired, with our
        issuer and audience, a `uid` and `scope_claim`. Raises AuthError otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.stream_secret,
                algorithms=["HS256"],
                audience=STREAM_AUDIENCE,
                issuer=STREAM_ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "uid", scope_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the stream token has expired") from None
        except jwt.PyJWTError:
            raise AuthError("invalid stream token") from None
        return claims

    def stream_user(self, token: str, job_id: str) -> str:
        """Return the user id of a valid stream token for `job_id`. Raises AuthError otherwise."""
        claims = self._stream_claims(token, "job")
        if claims.get("job") != job_id:
            raise AuthError("the stream token is for another job")
        return _uuid(claims["uid"])

    def mint_user_stream_token(self, user_id: str, *, now: float | None = None) -> str:
        """A token that lets its holder stream all of one user's jobs (`GET /api/events`)
        until it expires: scoped to the user (`scope: user`), never to a job."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": STREAM_ISSUER,
            "aud": STREAM_AUDIENCE,
            "uid": user_id,
            "scope": USER_SCOPE,
            "iat": issued,
            "exp": issued + self.stream_ttl,
        }
        return jwt.encode(claims, self.stream_secret, algorithm="HS256")

    def user_stream_user(self, token: str) -> str:
        """Return the user id of a valid user-scoped stream token. A job's stream token is
        refused here (and a user-scoped one by `stream_user`). Raises AuthError."""
        claims = self._stream_claims(token, "scope")
        if claims.get("scope") != USER_SCOPE or "job" in claims:
            raise AuthError("the stream token is for one job; use the user stream token")
        return _uuid(claims["uid"])


def mint_access_token(user_id: str, secret: str, *, ttl: int = 3600, email: str = "") -> str:
    """An HS256 access token shaped like Supabase's (dev tools and tests only)."""
    now = int(time.time())
    claims = {
        "aud": ACCESS_AUDIENCE,
        "sub": user_id,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl,
        "iss": "supabase-dev",
        "email": email,
        "is_anonymous": False,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def from_settings(settings: Any) -> Verifier:
    return Verifier(
        jwt_secret=settings.supabase_jwt_secret,
        jwks_url=settings.jwks_url,
        stream_secret=settings.stream_secret,
        stream_ttl=settings.stream_token_ttl_seconds,
    )
