"""lib/auth.py: Supabase access tokens (HS256 and JWKS) and per-job stream tokens.

JWKS keys are served by a real Flask app on loopback. PyJWKClient's cache and refresh cooldown
run on `time.monotonic`; the rotation tests give PyJWT's cache modules a fake clock so that
"30 s later" takes no time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify
from helpers.net import serve_wsgi
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lib.auth import ACCESS_AUDIENCE, Identity, Verifier, mint_access_token
from lib.config import load
from lib.errors import AuthError

SECRET = "a-test-jwt-secret-that-is-at-least-32-characters"
OTHER_SECRET = "another-test-secret-that-is-at-least-32-chars!!"
STREAM_SECRET = "the-stream-token-secret-of-at-least-32-characters"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"aud": ACCESS_AUDIENCE, "sub": str(uuid.uuid4()), "iat": now, "exp": now + 600, **extra}


# HS256 access tokens -----------------------------------------------------------------------


def test_a_valid_hs256_token_gives_its_user_id() -> None:
    user = str(uuid.uuid4())
    token = mint_access_token(user, SECRET)
    assert Verifier(jwt_secret=SECRET).user_id(token) == user


def test_an_expired_token_is_refused_as_expired() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="expired"):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_a_token_expired_within_the_leeway_is_still_accepted() -> None:
    body = claims(exp=int(time.time()) - 5)
    token = jwt.encode(body, SECRET, algorithm="HS256")
    assert Verifier(jwt_secret=SECRET).user_id(token) == body["sub"]


def test_a_token_for_another_audience_is_refused() -> None:
    token = jwt.encode(claims(aud="anon"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = mint_access_token(str(uuid.uuid4()), OTHER_SECRET)
    with pytest.raises(AuthError):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_an_unsigned_alg_none_token_is_refused() -> None:
    token = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims())}."
    assert jwt.get_unverified_header(token)["alg"] == "none"
    with pytest.raises(AuthError, match="algorithm"):
        Verifier(jwt_secret=SECRET, jwks_url="http://127.0.0.1:9/jwks").user_id(token)


def test_a_token_without_sub_is_refused() -> None:
    body = claims()
    del body["sub"]
    token = jwt.encode(body, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_a_token_without_exp_is_refused() -> None:
    body = claims()
    del body["exp"]
    token = jwt.encode(body, SECRET, algorithm="HS256")
    with pytest.raises(AuthError):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_a_token_whose_sub_is_not_a_uuid_is_refused() -> None:
    token = jwt.encode(claims(sub="service_role"), SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="user id"):
        Verifier(jwt_secret=SECRET).user_id(token)


def test_garbage_is_refused_as_malformed() -> None:
    with pytest.raises(AuthError, match="malformed"):
        Verifier(jwt_secret=SECRET).user_id("not-a-jwt")


def test_an_hs256_token_is_refused_when_only_jwks_is_configured() -> None:
    token = mint_access_token(str(uuid.uuid4()), SECRET)
    with pytest.raises(AuthError, match="algorithm"):
        Verifier(jwks_url="http://127.0.0.1:9/jwks").user_id(token)


# JWKS (ES256, RS256) -----------------------------------------------------------------------


@dataclass
class Jwks:
    """What the fake Supabase Auth serves at its JWKS path, and how often it was asked."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[Jwks]:
    state = Jwks()
    app = Flask("jwks")

    @app.get(JWKS_PATH)
    def keys() -> Any:
        state.fetches += 1
        return jsonify({"keys": list(state.keys)})

    with serve_wsgi(app) as base:
        state.url = base + JWKS_PATH
        yield state


@pytest.fixture
def jwks(jwks_server: Jwks) -> Jwks:
    """The module's JWKS server, emptied and with its fetch count reset for this test."""
    jwks_server.keys = []
    jwks_server.fetches = 0
    return jwks_server


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
    jwk = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def signed(key: Any, kid: str, alg: str, **extra: Any) -> tuple[str, str]:
    body = claims(**extra)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid}), body["sub"]


class FakeMonotonic:
    """A clock for PyJWT's JWKS cache: starts at 1000 s and moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def jwks_clock(monkeypatch: pytest.MonkeyPatch) -> FakeMonotonic:
    import jwt.api_jwk
    import jwt.jwk_set_cache
    import jwt.jwks_client

    clock = FakeMonotonic()
    fake_time = SimpleNamespace(monotonic=clock, time=time.time)
    for module in (jwt.jwks_client, jwt.jwk_set_cache, jwt.api_jwk):
        monkeypatch.setattr(module, "time", fake_time)
    return clock


def test_an_es256_token_verifies_against_the_jwks(jwks: Jwks) -> None:
    key = ec_key()
    jwks.keys = [public_jwk(key, "ec-1", "ES256")]
    token, user = signed(key, "ec-1", "ES256")
    assert Verifier(jwks_url=jwks.url).user_id(token) == user


def test_an_rs256_token_verifies_against_the_jwks(jwks: Jwks, rsa_key: Any) -> None:
    jwks.keys = [public_jwk(rsa_key, "rsa-1", "RS256")]
    token, user = signed(rsa_key, "rsa-1", "RS256")
    assert Verifier(jwks_url=jwks.url, jwt_secret=SECRET).user_id(token) == user


def test_the_jwks_is_fetched_once_for_many_tokens(jwks: Jwks) -> None:
    key = ec_key()
    jwks.keys = [public_jwk(key, "ec-1", "ES256")]
    verifier = Verifier(jwks_url=jwks.url)
    for _ in range(5):
        token, user = signed(key, "ec-1", "ES256")
        assert verifier.user_id(token) == user
    assert jwks.fetches == 1


def test_a_jwks_token_signed_by_a_key_not_in_the_jwks_is_refused(jwks: Jwks) -> None:
    served, forged = ec_key(), ec_key()
    jwks.keys = [public_jwk(served, "ec-1", "ES256")]
    token, _ = signed(forged, "ec-1", "ES256")
    with pytest.raises(AuthError):
        Verifier(jwks_url=jwks.url).user_id(token)


def test_a_jwks_token_with_an_unknown_kid_is_refused(jwks: Jwks) -> None:
    key = ec_key()
    jwks.keys = [public_jwk(key, "ec-1", "ES256")]
    token, _ = signed(key, "ec-unknown", "ES256")
    with pytest.raises(AuthError, match="unknown signing key"):
        Verifier(jwks_url=jwks.url).user_id(token)


def test_a_jwks_token_for_another_audience_is_refused(jwks: Jwks) -> None:
    key = ec_key()
    jwks.keys = [public_jwk(key, "ec-1", "ES256")]
    token, _ = signed(key, "ec-1", "ES256", aud="anon")
    with pytest.raises(AuthError):
        Verifier(jwks_url=jwks.url).user_id(token)


def test_an_hs256_token_keyed_with_the_rsa_public_pem_is_refused(jwks: Jwks, rsa_key: Any) -> None:
    jwks.keys = [public_jwk(rsa_key, "rsa-1", "RS256")]
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{segment(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(mac)}"
    verifier = Verifier(jwks_url=jwks.url, jwt_secret=SECRET)
    with pytest.raises(AuthError):
        verifier.user_id(token)
    with pytest.raises(AuthError):
        Verifier(jwks_url=jwks.url).user_id(token)


def test_a_key_rotated_into_the_jwks_is_accepted_after_pyjwts_refresh_cooldown(
    jwks: Jwks, jwks_clock: FakeMonotonic
) -> None:
    # PyJWKClient refetches the JWKS for an unknown kid, but (PyJWT 2.15) at most once per
    # `cooldown_duration` (30 s by default) after the last fetch; until then the kid is unknown.
    old, new = ec_key(), ec_key()
    jwks.keys = [public_jwk(old, "old", "ES256")]
    verifier = Verifier(jwks_url=jwks.url)
    token, user = signed(old, "old", "ES256")
    assert verifier.user_id(token) == user

    jwks.keys = [public_jwk(old, "old", "ES256"), public_jwk(new, "new", "ES256")]
    token, user = signed(new, "new", "ES256")
    jwks_clock.advance(1)
    with pytest.raises(AuthError, match="unknown signing key"):
        verifier.user_id(token)
    assert jwks.fetches == 1

    jwks_clock.advance(30)
    assert verifier.user_id(token) == user
    assert jwks.fetches == 2


def test_a_key_removed_from_the_jwks_is_refused_once_the_cache_expires(
    jwks: Jwks, jwks_clock: FakeMonotonic
) -> None:
    revoked, current = ec_key(), ec_key()
    jwks.keys = [public_jwk(revoked, "revoked", "ES256")]
    verifier = Verifier(jwks_url=jwks.url)
    token, user = signed(revoked, "revoked", "ES256")
    assert verifier.user_id(token) == user

    jwks.keys = [public_jwk(current, "current", "ES256")]
    jwks_clock.advance(3600)
    fresh, fresh_user = signed(current, "current", "ES256")
    assert verifier.user_id(fresh) == fresh_user
    refused = False
    try:
        verifier.user_id(signed(revoked, "revoked", "ES256")[0])
    except AuthError:
        refused = True
    assert refused, "a token signed by a revoked key was accepted"


# Stream tokens -----------------------------------------------------------------------------


def stream_verifier(secret: str = STREAM_SECRET) -> Verifier:
    return Verifier(stream_secret=secret, stream_ttl=600)


def test_a_minted_stream_token_gives_its_user_for_its_job() -> None:
    job, user = str(uuid.uuid4()), str(uuid.uuid4())
    verifier = stream_verifier()
    assert verifier.stream_user(verifier.mint_stream_token(job, user), job) == user


def test_a_stream_token_for_another_job_is_refused() -> None:
    verifier = stream_verifier()
    token = verifier.mint_stream_token(str(uuid.uuid4()), str(uuid.uuid4()))
    with pytest.raises(AuthError, match="another job"):
        verifier.stream_user(token, str(uuid.uuid4()))


def test_an_expired_stream_token_is_refused() -> None:
    job = str(uuid.uuid4())
    verifier = stream_verifier()
    token = verifier.mint_stream_token(job, str(uuid.uuid4()), now=time.time() - 700)
    with pytest.raises(AuthError, match="expired"):
        verifier.stream_user(token, job)


def test_a_stream_token_signed_with_another_secret_is_refused() -> None:
    job = str(uuid.uuid4())
    token = stream_verifier(OTHER_SECRET).mint_stream_token(job, str(uuid.uuid4()))
    with pytest.raises(AuthError):
        stream_verifier().stream_user(token, job)


def test_an_access_token_is_not_accepted_as_a_stream_token() -> None:
    job = str(uuid.uuid4())
    token = mint_access_token(str(uuid.uuid4()), STREAM_SECRET)
    with pytest.raises(AuthError):
        stream_verifier().stream_user(token, job)


def test_a_stream_token_is_not_accepted_as_an_access_token() -> None:
    verifier = Verifier(jwt_secret=SECRET, stream_secret=SECRET)
    token = verifier.mint_stream_token(str(uuid.uuid4()), str(uuid.uuid4()))
    with pytest.raises(AuthError):
        verifier.user_id(token)


# Anonymous users (issue 11, item 6) --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "anonymous"),
    [
        ({"role": "authenticated", "is_anonymous": False}, False),
        ({"role": "authenticated"}, False),  # tokens from before anonymous sign-ins existed
        ({"role": "authenticated", "is_anonymous": True}, True),  # signInAnonymously()
        ({"role": "anon", "is_anonymous": False}, True),
        ({"role": "service_role", "is_anonymous": False}, True),
        ({"is_anonymous": False}, True),  # no role at all
    ],
)
def test_an_anonymous_sign_in_or_another_role_is_an_anonymous_identity(
    extra: dict[str, Any], anonymous: bool
) -> None:
    body = claims(**extra)
    identity = Verifier(jwt_secret=SECRET).identity(jwt.encode(body, SECRET, algorithm="HS256"))
    assert identity.user_id == body["sub"]
    assert identity.anonymous is anonymous


def test_anonymous_users_hold_credit_only_when_allowed() -> None:
    assert not Identity(str(uuid.uuid4()), anonymous=True).may_hold_credit(False)
    assert Identity(str(uuid.uuid4()), anonymous=True).may_hold_credit(True)
    assert Identity(str(uuid.uuid4()), anonymous=False).may_hold_credit(False)


def test_allow_anonymous_users_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOW_ANONYMOUS_USERS", raising=False)
    assert load().allow_anonymous_users is False
    monkeypatch.setenv("ALLOW_ANONYMOUS_USERS", "true")
    assert load().allow_anonymous_users is True
