"""Packaging rules: api/ stays light for Vercel, the pins match pyproject, the wheel is the
product."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_ENV = {
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "WORKER_URL": "http://127.0.0.1:1",
    "SUPABASE_JWT_SECRET": "x" * 40,
    "STREAM_TOKEN_SECRET": "y" * 40,
    "QSTASH_TOKEN": "t",
}


def names(path: Path) -> set[str]:
    pattern = re.compile(r"^([A-Za-z0-9_.-]+)")
    return {
        m.group(1).lower().replace("_", "-")
        for line in path.read_text().splitlines()
        if (m := pattern.match(line))
    }


def test_the_api_functions_import_without_worker_only_dependencies() -> None:
    code = (
        "import sys, api.jobs, api.events, api.me, api.health, api._local\n"
        "heavy = [m for m in ('openai', 'gunicorn', 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    env = {**os.environ, **API_ENV, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "none", out.stderr


def test_the_vercel_requirements_hold_the_api_set_and_nothing_worker_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[\[<>=;! ]", d)[0].lower() for d in project["dependencies"]}
    worker = {
        re.split(r"[\[<>=;! ]", d)[0].lower() for d in project["optional-dependencies"]["worker"]
    }
    api_pins, worker_pins = (
        names(ROOT / "requirements.txt"),
        names(ROOT / "worker/requirements.txt"),
    )
    assert base <= api_pins
    assert not (worker & api_pins)
    assert base | worker <= worker_pins


def test_the_wheel_ships_only_the_product_and_no_scripts_package(tmp_path: Path) -> None:
    # Built from a copy of the source tree with scripts/ in it, as a fresh clone has it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("lib", "api", "worker", "scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if ".dist-info/" not in name}
    assert tops == {"lib", "api", "worker"}
