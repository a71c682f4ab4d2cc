"""What a cold function loads for its first answer, on the production adapters.

A fresh process imports one `api/` function and serves one real request through its WSGI app,
as Vercel does on a cold start, against the Upstash REST and PostgREST stand-ins; then it lists
the packages it loaded. Each function loads only the clients its request uses (the timing of
the same runs is in `make bench`, docs/performance.md). Counted, never timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.net import SERVICE_ROLE_KEY, UPSTASH_TOKEN, free_port

from lib.auth import mint_access_token

ROOT = Path(__file__).resolve().parents[1]
SECRET = "a-cold-start-test-secret-of-40-characters"
BODY = {"kind": "job_match", "input": {"resume_text": "Python.", "job_description": "Backend."}}
CLIENTS = {"httpx", "postgrest", "upstash_redis", "qstash", "jwt", "openai"}
SUPABASE_SDK = {"supabase", "supabase_auth", "storage3", "realtime", "supabase_functions"}
# Not needed by any function: lib.config reads the environment itself (about 20 ms).
NEVER = {"pydantic_settings", "supabase", "openai"}
OTHER_KINDS = {
    f"lib.handlers.{kind}"
    for kind in (
        "detailed_resume_summary",
        "interview_prep",
        "job_summary",
        "pre_match_audit",
        "resume_customize",
        "resume_summary",
    )
}
_CHILD = """
import json, sys
from {module} import app
from werkzeug.test import EnvironBuilder, run_wsgi_app
environ = EnvironBuilder({path!r}, method={method!r}, headers={headers!r}, json={body!r})
chunks, status, _ = run_wsgi_app(app, environ.get_environ())
first = next(iter(chunks), b"")
loaded = sorted({{name.split(".")[0] for name in sys.modules}} | set(sys.modules))
print(json.dumps({{"status": status, "body": first.decode()[:300], "loaded": loaded}}))
"""


@pytest.fixture
def cold(upstash_url: str, postgrest_url: str, redis_prefix: str) -> object:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS", "DATABASE", "UPSTASH", "SUPABASE", "QSTASH"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        UPSTASH_REDIS_REST_URL=upstash_url,
        UPSTASH_REDIS_REST_TOKEN=UPSTASH_TOKEN,
        SUPABASE_URL=postgrest_url,
        SUPABASE_SERVICE_ROLE_KEY=SERVICE_ROLE_KEY,
        SUPABASE_JWT_SECRET=SECRET,
        STREAM_TOKEN_SECRET="a-stream-token-secret-of-at-least-32-chars",
        QSTASH_URL=f"http://127.0.0.1:{free_port()}",  # no broker: a submit answers 503
        QSTASH_TOKEN="t",
        WORKER_URL="http://127.0.0.1:9",
        REDIS_PREFIX=redis_prefix,
        LOG_LEVEL="ERROR",
    )

    def serve(module: str, method: str, path: str, body: object = None) -> tuple[str, set[str]]:
        headers = {"Authorization": f"Bearer {mint_access_token(str(uuid.uuid4()), SECRET)}"}
        code = _CHILD.format(module=module, method=method, path=path, headers=headers, body=body)
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        return answer["status"], set(answer["loaded"])

    return serve


def test_a_cold_health_check_loads_no_service_client(cold: object) -> None:
    status, loaded = cold("api.health", "GET", "/api/health")  # type: ignore[operator]

    assert status.startswith("200")
    assert not (CLIENTS | SUPABASE_SDK) & loaded


def test_a_cold_me_loads_only_the_postgrest_client_and_the_jwt_library(cold: object) -> None:
    status, loaded = cold("api.me", "GET", "/api/me")  # type: ignore[operator]

    assert status.startswith("200")
    assert {"postgrest", "jwt", "httpx"} <= loaded
    assert not {"upstash_redis", "qstash", "openai", "lib.handlers"} & loaded
    assert not SUPABASE_SDK & loaded


def test_a_cold_submit_loads_its_three_clients_but_not_the_whole_supabase_sdk(
    cold: object,
) -> None:
    status, loaded = cold("api.jobs", "POST", "/api/jobs", BODY)  # type: ignore[operator]

    assert status.startswith("503")  # the broker is down: all three clients were used
    assert {"postgrest", "upstash_redis", "qstash", "jwt"} <= loaded
    assert not (NEVER | SUPABASE_SDK) & loaded


def test_a_cold_submit_builds_only_its_own_kinds_models(cold: object) -> None:
    status, loaded = cold("api.jobs", "POST", "/api/jobs", BODY)  # type: ignore[operator]

    assert status.startswith("503")
    assert "lib.handlers.job_match" in loaded
    assert not OTHER_KINDS & loaded


def test_a_cold_submit_of_an_unknown_kind_imports_no_handler(
    cold: object,
) -> None:
    body = {**BODY, "kind": "..job_match"}
    status, loaded = cold("api.jobs", "POST", "/api/jobs", body)  # type: ignore[operator]

    assert status.startswith("400")
    assert not {"lib.handlers.job_match", "lib.handlers...job_match"} & loaded


@pytest.mark.parametrize(
    ("module", "method", "path"),
    [("api.health", "GET", "/api/health"), ("api.me", "GET", "/api/me")],
)
def test_no_cold_function_imports_pydantic_settings(
    cold: object, module: str, method: str, path: str
) -> None:
    status, loaded = cold(module, method, path)  # type: ignore[operator]

    assert status.startswith("200")
    assert not NEVER & loaded
    assert not ({"lib.handlers.job_match"} | OTHER_KINDS) & loaded
