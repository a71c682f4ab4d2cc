"""lib/queue/receiver.py `verify` against lib/queue/signing.py `sign`, and the SDK it works around.

The signature TTL is 300 s (`SIGNATURE_TTL_SECONDS`), so a token signed 320 s ago expired 20 s
ago (inside a 30 s tolerance) and one signed 400 s ago expired 100 s ago (outside it).
"""

from __future__ import annotations

import time

import jwt
import pytest
from qstash import Receiver
from qstash.errors import SignatureError

from lib.queue.receiver import InvalidSignature, verify, verify_body, verify_token
from lib.queue.signing import (
    DEV_CURRENT_SIGNING_KEY,
    DEV_NEXT_SIGNING_KEY,
    SIGNATURE_TTL_SECONDS,
    body_hash,
    sign,
)

URL = "https://worker.example.com/v1/execute"
BODY = b'{"job_id":"3f1c0a52-7c1e-4a8e-9c1b-0d5c6f1e2a3b"}'
KEYS = [DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY]
OTHER_KEY = "sig_0000000000000000000000000000"


def test_a_signature_made_with_the_current_key_verifies() -> None:
    verify(sign(DEV_CURRENT_SIGNING_KEY, URL, BODY), BODY, keys=KEYS, url=URL)


def test_a_signature_made_with_the_next_key_verifies_during_rotation() -> None:
    verify(sign(DEV_NEXT_SIGNING_KEY, URL, BODY), BODY, keys=KEYS, url=URL)


def test_a_signature_made_with_another_key_is_refused() -> None:
    with pytest.raises(InvalidSignature):
        verify(sign(OTHER_KEY, URL, BODY), BODY, keys=KEYS, url=URL)


def test_a_missing_signature_header_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="missing"):
        verify(None, BODY, keys=KEYS, url=URL)
    with pytest.raises(InvalidSignature, match="missing"):
        verify("", BODY, keys=KEYS, url=URL)


def test_no_configured_key_refuses_every_signature() -> None:
    with pytest.raises(InvalidSignature, match="no signing key"):
        verify(sign(DEV_CURRENT_SIGNING_KEY, URL, BODY), BODY, keys=["", ""], url=URL)


def test_a_tampered_body_is_refused() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY)
    with pytest.raises(InvalidSignature, match="body hash"):
        verify(signature, BODY.replace(b"3f1c", b"3f1d"), keys=KEYS, url=URL)


def test_a_signature_for_another_destination_is_refused() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, "https://evil.example.com/v1/execute", BODY)
    with pytest.raises(InvalidSignature, match="another destination"):
        verify(signature, BODY, keys=KEYS, url=URL)


def test_the_destination_is_not_checked_when_url_is_none() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, "https://elsewhere.example.com/x", BODY)
    verify(signature, BODY, keys=KEYS, url=None)


def test_a_signature_expired_within_the_clock_tolerance_is_accepted() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY, now=time.time() - 320)
    verify(signature, BODY, keys=KEYS, url=URL, clock_tolerance=30)


def test_a_signature_expired_beyond_the_clock_tolerance_is_refused() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY, now=time.time() - 400)
    with pytest.raises(InvalidSignature, match="expired"):
        verify(signature, BODY, keys=KEYS, url=URL, clock_tolerance=30)


def test_a_signature_not_yet_valid_beyond_the_clock_tolerance_is_refused() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY, now=time.time() + 120)
    with pytest.raises(InvalidSignature, match="not yet valid"):
        verify(signature, BODY, keys=KEYS, url=URL, clock_tolerance=30)


def test_a_signature_not_yet_valid_within_the_clock_tolerance_is_accepted() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY, now=time.time() + 10)
    verify(signature, BODY, keys=KEYS, url=URL, clock_tolerance=30)


def test_a_body_hash_with_base64_padding_still_verifies() -> None:
    now = int(time.time())
    signature = jwt.encode(
        {
            "iss": "Upstash",
            "sub": URL,
            "exp": now + SIGNATURE_TTL_SECONDS,
            "nbf": now,
            "iat": now,
            "jti": "jwt_padding",
            "body": body_hash(BODY) + "=",
        },
        DEV_CURRENT_SIGNING_KEY,
        algorithm="HS256",
    )
    verify(signature, BODY, keys=KEYS, url=URL)


def token_without_body_claim() -> str:
    """A correctly signed Upstash-shaped token that has no `body` claim."""
    now = int(time.time())
    return jwt.encode(
        {
            "iss": "Upstash",
            "sub": URL,
            "exp": now + SIGNATURE_TTL_SECONDS,
            "nbf": now,
            "iat": now,
            "jti": "jwt_no_body",
        },
        DEV_CURRENT_SIGNING_KEY,
        algorithm="HS256",
    )


def test_a_token_without_a_body_claim_is_refused_as_an_invalid_signature() -> None:
    with pytest.raises(InvalidSignature, match="body"):
        verify(token_without_body_claim(), BODY, keys=KEYS, url=URL)


def test_a_token_from_another_issuer_is_refused() -> None:
    now = int(time.time())
    signature = jwt.encode(
        {
            "iss": "NotUpstash",
            "sub": URL,
            "exp": now + 300,
            "nbf": now,
            "iat": now,
            "body": body_hash(BODY),
        },
        DEV_CURRENT_SIGNING_KEY,
        algorithm="HS256",
    )
    with pytest.raises(InvalidSignature):
        verify(signature, BODY, keys=KEYS, url=URL)


def test_a_token_without_a_jti_claim_is_refused() -> None:
    now = int(time.time())
    signature = jwt.encode(
        {"iss": "Upstash", "sub": URL, "exp": now + 300, "nbf": now, "body": body_hash(BODY)},
        DEV_CURRENT_SIGNING_KEY,
        algorithm="HS256",
    )
    with pytest.raises(InvalidSignature, match="jti"):
        verify(signature, BODY, keys=KEYS, url=URL)


@pytest.mark.parametrize(
    "header",
    ["Bearer x", "not-a-jwt", "a.b", "a.b.c.d", "a.b.c" + "x" * 5000, "a.b.c\n", "é.b.c"],
)
def test_a_header_that_is_not_a_compact_jwt_is_refused_as_malformed(header: str) -> None:
    with pytest.raises(InvalidSignature, match="malformed"):
        verify_token(header, keys=KEYS, url=URL)


def test_the_token_verifies_without_the_body_and_the_body_is_checked_after() -> None:
    claims = verify_token(sign(DEV_CURRENT_SIGNING_KEY, URL, BODY), keys=KEYS, url=URL)
    assert claims.jti.startswith("jwt_") and claims.exp > time.time()
    verify_body(claims, BODY)
    with pytest.raises(InvalidSignature, match="body hash"):
        verify_body(claims, BODY + b" ")


# The official SDK (qstash 3.4): the two behaviours `lib.queue.receiver` exists to avoid.


def test_the_qstash_sdk_raises_key_error_for_a_token_without_a_body_claim() -> None:
    sdk = Receiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    with pytest.raises(KeyError, match="body"):
        sdk.verify(signature=token_without_body_claim(), body=BODY.decode(), url=URL)


def test_the_qstash_sdk_ignores_its_clock_tolerance() -> None:
    signature = sign(DEV_CURRENT_SIGNING_KEY, URL, BODY, now=time.time() - 320)
    sdk = Receiver(DEV_CURRENT_SIGNING_KEY, DEV_CURRENT_SIGNING_KEY)
    with pytest.raises(SignatureError, match="expired"):
        sdk.verify(signature=signature, body=BODY.decode(), url=URL, clock_tolerance=3600)
    verify(signature, BODY, keys=KEYS, url=URL, clock_tolerance=30)


def test_the_qstash_sdk_accepts_what_sign_produces() -> None:
    sdk = Receiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY)
    sdk.verify(signature=sign(DEV_NEXT_SIGNING_KEY, URL, BODY), body=BODY.decode(), url=URL)
