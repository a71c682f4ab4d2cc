"""Attacks on the worker's public surface (issue 11, items 2, 8 and 10): worker memory, signature
replay, forged unsigned headers, and what `/readyz` tells a stranger.

The worker runs in-process on the real executor, Redis, Postgres and offline LLM
(`tests/fixtures/inprocess.py` `make_worker`), served over a real loopback socket where the test
needs to control what reaches the wire: a request's headers are sent and its body is not, so an
answer that arrives proves the body was never waited for.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import jwt
import pytest
from helpers.net import free_port, serve_wsgi

from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, SIGNATURE_TTL_SECONDS, sign
from lib.queue.wire import message_body
from worker.app import MAX_BODY_BYTES

if TYPE_CHECKING:
    from helpers.worker import Created, Db, WorkerEnv


ANSWER_TIMEOUT = 10.0
HUGE = 300 * 1024 * 1024


@pytest.fixture
def worker_address(env: WorkerEnv) -> Iterator[tuple[str, int]]:
    with serve_wsgi(env.app) as url:
        parts = urlsplit(url)
        yield parts.hostname or "127.0.0.1", parts.port or 80


def body_of(job: Created, retries: int = 3) -> bytes:
    return message_body(job.job_id, job.user_id, job.tier, retries)


def post(env: WorkerEnv, path: str, raw: bytes, **headers: str) -> tuple[int, dict[str, object]]:
    answer = env.app.test_client().post(path, data=raw, headers=headers)
    return answer.status_code, answer.get_json()


def send_head(address: tuple[str, int], headers: dict[str, str]) -> socket.socket:
    """Open a connection and send a POST /v1/execute's request line and headers only."""
    sock = socket.create_connection(address, timeout=ANSWER_TIMEOUT)
    lines = ["POST /v1/execute HTTP/1.1", f"Host: {address[0]}:{address[1]}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Status and JSON body of the answer; socket.timeout when none comes in time."""
    received = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while b"\r\n\r\n" not in received or not _complete(received):
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete answer in {ANSWER_TIMEOUT}s: {received[:200]!r}")
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def forged_signature(url: str, body: bytes) -> str:
    """Shaped and claimed exactly like QStash's, but signed with a key nobody configured."""
    return sign("sig_0000000000000000000000000000", url, body)


# Item 2: the body is not read before the signature is known good --------------------------


@pytest.mark.parametrize("signature", ["none", "garbage", "forged", "expired"])
def test_an_unsigned_post_is_refused_before_its_body_is_sent(
    env: WorkerEnv, worker_address: tuple[str, int], signature: str
) -> None:
    length = MAX_BODY_BYTES - 1
    headers = {"Content-Type": "application/json", "Content-Length": str(length)}
    placeholder = b"x" * length
    if signature == "garbage":
        headers["Upstash-Signature"] = "x" * 300
    elif signature == "forged":
        headers["Upstash-Signature"] = forged_signature(env.settings.execute_url, placeholder)
    elif signature == "expired":
        headers["Upstash-Signature"] = sign(
            DEV_CURRENT_SIGNING_KEY,
            env.settings.execute_url,
            placeholder,
            now=time.time() - SIGNATURE_TTL_SECONDS - 3600,
        )

    with send_head(worker_address, headers) as sock:
        status, body = read_answer(sock)  # not one byte of the body was sent

    assert status == 401
    assert body["error"]["code"] == "unauthorized"  # type: ignore[index]


@pytest.mark.parametrize("signed", [False, True])
def test_a_huge_content_length_is_refused_with_413_before_the_body_is_sent(
    env: WorkerEnv, worker_address: tuple[str, int], signed: bool
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(HUGE)}
    if signed:
        headers["Upstash-Signature"] = sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, b"")

    with send_head(worker_address, headers) as sock:
        status, body = read_answer(sock)

    assert status == 413
    assert body == {
        "error": {
            "code": "payload_too_large",
            "message": f"the body is over {MAX_BODY_BYTES} bytes",
            "details": None,
        }
    }


def test_a_signed_chunked_body_over_the_cap_gets_413_not_a_full_read(
    env: WorkerEnv, worker_address: tuple[str, int], db: Db
) -> None:
    job = env.create_job()
    piece = b" " * 16384
    chunks = 2 * MAX_BODY_BYTES // len(piece)
    headers = {
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        # Valid for its destination and in date: only the body's size can refuse it.
        "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, body_of(job)),
    }

    with send_head(worker_address, headers) as sock:
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sock.sendall(frame * chunks + b"0\r\n\r\n")
        status, body = read_answer(sock)

    assert status == 413
    assert body["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert db.job(job.job_id)["attempts"] == 0


def test_a_signed_chunked_body_exactly_at_the_cap_is_read_whole_and_runs(
    env: WorkerEnv, worker_address: tuple[str, int], db: Db
) -> None:
    job = env.create_job()
    raw = body_of(job).ljust(MAX_BODY_BYTES)  # JSON allows the trailing blanks
    headers = {
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
    }

    with send_head(worker_address, headers) as sock:
        sock.sendall(f"{len(raw):x}\r\n".encode() + raw + b"\r\n0\r\n\r\n")
        status, body = read_answer(sock)

    assert status == 200, body
    assert db.job(job.job_id)["status"] == "succeeded"


# Item 8: a signature is accepted once; unsigned headers decide nothing ----------------------


def test_a_replayed_delivery_is_refused_and_runs_nothing_twice(env: WorkerEnv, db: Db) -> None:
    job = env.create_job()
    raw = body_of(job)
    captured = {
        "Content-Type": "application/json",
        "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
    }

    first = post(env, "/v1/execute", raw, **captured)
    replayed = post(env, "/v1/execute", raw, **captured, **{"Upstash-Retried": "1"})

    assert first[0] == 200 and first[1]["status"] == "succeeded"
    assert replayed[0] == 401 and replayed[1]["error"]["code"] == "unauthorized"  # type: ignore[index]
    assert db.job(job.job_id)["attempts"] == 1
    jti = jwt.decode(captured["Upstash-Signature"], options={"verify_signature": False})["jti"]
    remaining_ms = env.state.backend.command("PTTL", env.state.keys.signature(jti))
    tolerance = env.settings.qstash_clock_tolerance_seconds
    assert 0 < int(remaining_ms) <= (SIGNATURE_TTL_SECONDS + tolerance) * 1000


def test_a_replayed_failure_callback_is_refused(env: WorkerEnv, db: Db) -> None:
    job = env.create_job()
    raw = json.dumps(
        {"status": 500, "retried": 3, "sourceBody": base64.b64encode(body_of(job)).decode()}
    ).encode()
    signature = sign(DEV_CURRENT_SIGNING_KEY, env.settings.failed_url, raw)

    first = post(env, "/v1/failed", raw, **{"Upstash-Signature": signature})
    replayed = post(env, "/v1/failed", raw, **{"Upstash-Signature": signature})

    assert first[0] == 200 and first[1]["changed"] is True
    assert replayed[0] == 401
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]


def test_a_forged_retry_count_does_not_make_a_retryable_failure_final(
    env: WorkerEnv, db: Db
) -> None:
    job = env.create_job("[[llm:fail=500]]")
    raw = body_of(job, retries=3)

    status, body = post(
        env,
        "/v1/execute",
        raw,
        **{
            "Upstash-Signature": sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw),
            "Upstash-Retried": "99",
        },
    )

    assert status == 503, body
    assert db.job(job.job_id)["status"] == "running"
    assert db.ledger(job.job_id) == [("debit", -1)]


def test_the_signed_retry_count_still_ends_the_last_attempt(env: WorkerEnv, db: Db) -> None:
    job = env.create_job("[[llm:fail=500]]")
    raw = body_of(job, retries=1)

    def attempt() -> int:
        signature = sign(DEV_CURRENT_SIGNING_KEY, env.settings.execute_url, raw)
        # Whatever the unsigned header claims.
        return post(
            env, "/v1/execute", raw, **{"Upstash-Signature": signature, "Upstash-Retried": "0"}
        )[0]

    assert attempt() == 503
    assert attempt() == 489
    assert db.job(job.job_id)["status"] == "failed"
    assert db.ledger(job.job_id) == [("debit", -1), ("refund", 1)]


# Item 10: /readyz says ready or not, and nothing more ----------------------------------------


def test_readiness_does_not_say_which_dependency_is_down(
    make_worker: Callable[..., WorkerEnv],
) -> None:
    env = make_worker(redis_url=f"redis://127.0.0.1:{free_port()}")

    ready = env.app.test_client().get("/readyz")

    assert ready.status_code == 503
    assert ready.get_json() == {"ok": False}
    assert not {"redis", "db", "checks"} & set(
        ready.get_data(as_text=True).replace('"', " ").split()
    )
