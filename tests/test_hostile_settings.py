"""Settings that failed open, and stream tokens (issue 11, items 5 and 7).

The public dev values (Supabase's local JWT secret, `qstash dev`'s token and signing keys, all
shipped in `.env.example`) let anyone mint access tokens and sign deliveries. They are accepted
only by a process that says `APP_ENV=development` and binds loopback, and never on Vercel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from helpers.net import free_port

from lib.auth import Verifier, from_settings
from lib.config import DEV_JWT_SECRET, Settings, load
from lib.errors import AuthError, ConfigError
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://127.0.0.1/cs",
    "WORKER_URL": "http://127.0.0.1:8080",
}
DEV_API = {**COMMON, "SUPABASE_JWT_SECRET": DEV_JWT_SECRET, "QSTASH_TOKEN": DEV_TOKEN}
DEV_WORKER = {
    **COMMON,
    "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
    "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
}
REAL_SECRET = "a-production-jwt-secret-of-forty-chars!!"
REAL_STREAM_SECRET = "a-production-stream-secret-of-40-chars!"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing Settings reads leaks in from the process, and no `.env` but the test's own."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(role: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load(role)  # type: ignore[arg-type]
    return str(caught.value)


def clean_process_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any setting, plus `extra`."""
    names = {name.upper() for name in Settings.model_fields}
    return {
        **{k: v for k, v in os.environ.items() if k.upper() not in names},
        "PYTHONPATH": str(ROOT),
        **extra,
    }


# Item 5: production is the default; the dev values need development on loopback ------------


def test_without_app_env_the_producer_refuses_the_public_dev_secret_and_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = problems("api", DEV_API, monkeypatch)
    assert (
        "SUPABASE_JWT_SECRET, QSTASH_TOKEN are public dev values, accepted only with "
        "APP_ENV=development (APP_ENV is production)"
    ) in message


def test_without_app_env_the_worker_refuses_the_public_dev_signing_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = problems("worker", DEV_WORKER, monkeypatch)
    assert ("QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY are public dev values") in message


def test_one_public_dev_signing_key_is_refused_beside_a_real_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**DEV_WORKER, "QSTASH_CURRENT_SIGNING_KEY": "sig_a_real_key_of_this_project_01"}
    message = problems("worker", env, monkeypatch)
    assert "QSTASH_NEXT_SIGNING_KEY is a public dev value" in message


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "worker.example.com"])
def test_the_public_dev_values_are_refused_when_the_process_binds_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    env = {**DEV_WORKER, "APP_ENV": "development", "HOST": host}
    message = problems("worker", env, monkeypatch)
    assert f"accepted only on loopback (HOST is {host})" in message


@pytest.mark.parametrize("role", ["api", "worker"])
def test_the_public_dev_values_are_refused_on_vercel_whatever_app_env_says(
    monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    env = {**(DEV_API if role == "api" else DEV_WORKER), "APP_ENV": "development", "VERCEL": "1"}
    assert "refused on Vercel (VERCEL is set)" in problems(role, env, monkeypatch)


@pytest.mark.parametrize("host", ["", "127.0.0.1", "::1", "localhost"])
def test_an_explicit_development_process_on_loopback_accepts_the_dev_values(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    for name, value in {**DEV_API, **DEV_WORKER, "APP_ENV": "development", "HOST": host}.items():
        monkeypatch.setenv(name, value)
    assert load("api").app_env == "development"
    assert load("worker").bind_host in ("127.0.0.1", "::1", "localhost")


def test_env_example_copied_as_is_makes_no_process_that_accepts_its_dev_values(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    shutil.copy(ROOT / ".env.example", clean_env / ".env")
    for name, value in COMMON.items():
        monkeypatch.setenv(name, value)
    for role in ("api", "worker"):
        with pytest.raises(ConfigError, match="public dev value"):
            load(role)  # type: ignore[arg-type]


def gunicorn_bind(**env: str) -> str:
    code = "import runpy; print(runpy.run_path('worker/gunicorn.conf.py')['bind'])"
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_process_env(PROMETHEUS_MULTIPROC_DIR=str(Path.cwd() / "metrics"), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_the_dev_worker_binds_loopback_and_the_production_image_every_interface() -> None:
    assert gunicorn_bind(APP_ENV="development", PORT="18080") == "127.0.0.1:18080"
    assert gunicorn_bind(PORT="18080") == "0.0.0.0:18080"
    assert gunicorn_bind(APP_ENV="production", HOST="10.0.0.5") == "10.0.0.5:8080"


def test_a_worker_started_with_the_dev_keys_and_no_app_env_exits_naming_every_problem() -> None:
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", "import worker.wsgi"],
        cwd=Path.cwd(),
        env=clean_process_env(
            **{**DEV_WORKER, "LLM_MODEL_FREE": "acme:model", "REDIS_URL": "", "WORKER_URL": ""}
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    message = done.stderr[done.stderr.index("invalid configuration") :]
    assert "QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY are public dev values" in message
    assert "unknown provider 'acme'" in message
    assert "REDIS_URL" in message and "WORKER_URL" in message


def test_a_dev_worker_told_to_bind_every_interface_on_the_command_line_exits(
    tmp_path: Path,
) -> None:
    port = free_port()
    done = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "worker/gunicorn.conf.py",
            "--bind",
            f"0.0.0.0:{port}",
            "worker.wsgi:app",
        ],
        cwd=ROOT,
        env=clean_process_env(
            **DEV_WORKER,
            APP_ENV="development",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
            GUNICORN_WORKER_CLASS="gthread",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert (
        "QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY: public dev values, accepted only "
        f"on loopback (listening at http://0.0.0.0:{port})"
    ) in done.stderr
    assert "Booting worker" not in done.stderr


# Item 7: stream tokens ----------------------------------------------------------------------


def test_production_requires_a_stream_token_secret_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = {**COMMON, "SUPABASE_JWT_SECRET": REAL_SECRET, "QSTASH_TOKEN": "a-real-token"}
    assert "STREAM_TOKEN_SECRET must be set (>= 32 chars) with APP_ENV=production" in problems(
        "api", real, monkeypatch
    )
    shared = {**real, "STREAM_TOKEN_SECRET": REAL_SECRET}
    assert "STREAM_TOKEN_SECRET must differ from SUPABASE_JWT_SECRET" in problems(
        "api", shared, monkeypatch
    )
    monkeypatch.setenv("STREAM_TOKEN_SECRET", REAL_STREAM_SECRET)
    settings = load("api")
    assert from_settings(settings).stream_secret == REAL_STREAM_SECRET


def test_a_stream_token_is_short_lived_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**DEV_API, "APP_ENV": "development"}.items():
        monkeypatch.setenv(name, value)
    verifier = from_settings(load("api"))
    claims = jwt.decode(
        verifier.mint_stream_token(str(uuid.uuid4()), str(uuid.uuid4())),
        options={"verify_signature": False},
    )
    assert claims["exp"] - claims["iat"] == 600


def test_a_stream_token_is_no_supabase_session_even_signed_with_the_supabase_secret() -> None:
    # Development may sign stream tokens with SUPABASE_JWT_SECRET: the token must still not
    # read as a Supabase session (no `sub`, no `role`, an audience and issuer of our own).
    verifier = Verifier(jwt_secret=DEV_JWT_SECRET, stream_secret=DEV_JWT_SECRET)
    job, user = str(uuid.uuid4()), str(uuid.uuid4())
    token = verifier.mint_stream_token(job, user)

    claims = jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"], options={"verify_aud": False})

    assert "sub" not in claims and "role" not in claims
    assert claims["aud"] != "authenticated" and claims["iss"] != "supabase"
    with pytest.raises(AuthError):
        verifier.user_id(token)
    assert verifier.stream_user(token, job) == user


def test_a_stream_token_without_its_issuer_is_refused() -> None:
    job = str(uuid.uuid4())
    now = int(time.time())
    forged = jwt.encode(
        {"aud": "careershaper-stream", "uid": str(uuid.uuid4()), "job": job, "exp": now + 60},
        REAL_STREAM_SECRET,
        algorithm="HS256",
    )
    with pytest.raises(AuthError):
        Verifier(stream_secret=REAL_STREAM_SECRET).stream_user(forged, job)
