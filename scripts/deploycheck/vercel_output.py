"""The vercel step of `make check-deploy`: what `vercel build` produced (.vercel/output) holds
exactly the intended functions, routes and static files.

    python vercel_output.py APP_DIR ROOT "EXPECTED FUNCTIONS"
"""

import json
import re
import subprocess
import sys
from pathlib import Path

from lib.config import Settings

app, root, expected = Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3].split())
out = app / ".vercel/output"
problems = []

functions = {
    str(p.relative_to(out / "functions"))[: -len(".func")]
    for p in (out / "functions").rglob("*.func")
}
if functions != expected:
    problems.append(f"functions are {sorted(functions)}, want exactly {sorted(expected)}")

configs = {}
for name in sorted(functions):
    config = json.loads((out / "functions" / f"{name}.func/.vc-config.json").read_text())
    configs[name] = config
    if config.get("runtime") != "python3.12":
        problems.append(
            f"{name}: runtime {config.get('runtime')}, want python3.12 (.python-version)"
        )
    bundled = set(config.get("filePathMap", {}))
    vendored = {f.split("/")[1] for f in bundled if f.startswith("_vendor/")}
    heavy = vendored & {"openai", "gunicorn", "prometheus_client"}
    if heavy:
        problems.append(f"{name} bundles worker-only packages {sorted(heavy)}")
    top = {f.split("/")[0] for f in bundled if not f.startswith("_vendor/")}
    # pyproject.toml and uv.lock are what vercel build generates from requirements.txt.
    stray = top - {
        "api",
        "lib",
        "requirements.txt",
        ".python-version",
        "vercel.json",
        "README.md",
        ".vercelignore",
        "pyproject.toml",
        "uv.lock",
    }
    if stray:
        problems.append(f"{name} bundles {sorted(stray)}: add them to .vercelignore")
    secret = [f for f in bundled if re.search(r"(^|/)\.env|\.log$", f)]
    if secret:
        problems.append(f"{name} bundles {secret}")

sse = Settings.model_fields["sse_max_seconds"].default
events_max = configs.get("api/events", {}).get("maxDuration", 0)
if not (sse <= events_max <= 300):
    problems.append(
        f"api/events maxDuration {events_max}: want SSE_MAX_SECONDS ({sse:g}) <= it <= 300"
    )
for name, config in configs.items():
    if not config.get("maxDuration"):
        problems.append(f"{name}: no maxDuration")

routes = json.loads((out / "config.json").read_text())["routes"]
job = "3f0f6d2a-8a4c-4a5e-9f60-3f0b2d8c1e11"
want_routes = {
    f"/api/jobs/{job}": "/api/jobs",
    f"/api/jobs/{job}/cancel": "/api/jobs",
    f"/api/jobs/{job}/events": "/api/events",
}
for path, function in want_routes.items():
    # The first route that rewrites it; header routes (`"continue": true`) have no dest.
    dest = next((r["dest"] for r in routes if "dest" in r and re.match(r["src"], path)), None)
    if dest is None or dest.split("?")[0] != function:
        problems.append(f"{path} routes to {dest}, want {function}")
for path in ("/api/jobs", "/api/me", "/api/health"):
    if path[1:] not in functions:
        problems.append(f"{path} has no function")

static = [
    p.relative_to(out / "static").as_posix() for p in (out / "static").rglob("*") if p.is_file()
]
public = set(
    subprocess.run(
        ["git", "ls-files", "public"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
)
served = [
    f
    for f in static
    if re.search(r"\.(py|pyc|sql|toml|lock|log|env)$|(^|/)\.env", f) or f"public/{f}" not in public
]
if served:
    problems.append(f"served as static files (only public/ may be): {served}")

if problems:
    sys.exit("vercel build output:\n  " + "\n  ".join(problems))
print(
    f"vercel: functions {sorted(functions)}; events maxDuration {events_max} >= SSE_MAX_SECONDS "
    f"{sse:g}; routes {sorted(want_routes)}; static files {sorted(static)}"
)
