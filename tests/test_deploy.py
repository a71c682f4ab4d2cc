"""Static checks of the deployment files: fast, no network, no Docker, no npm.

`make check-deploy` (scripts/check-deploy) runs the real tools: hadolint, compose, caddy,
actionlint, `vercel build`, and the container-equivalent smoke test. These tests keep the
agreements between files that those tools cannot see.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import yaml

from lib.config import Settings

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
        "worker/",
        "tests/",
    } <= patterns
    assert not patterns & {"api/", "lib/", "requirements.txt", ".python-version", "public/"}


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
    assert published[3000] == "producer" and published[8080] == "local-worker"
    assert published[8081] == "qstash"


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
