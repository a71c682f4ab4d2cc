"""Invoke a built Vercel function the way `vercel dev` invokes a Lambda, from inside its directory,
with Vercel's Python 3.12; each case's status and error code must be the SPEC's.

    cd FUNCTION_DIR && python3.12 vercel_invoke.py NAME
"""

import json
import os
import sys

# Run from the function's directory: its modules import as the runtime imports them.
sys.path.insert(0, os.getcwd())

name = sys.argv[1]
job = "3f0f6d2a-8a4c-4a5e-9f60-3f0b2d8c1e11"
# (method, path as vercel dev passes it, expected status, expected error code or None)
cases = {
    "api/health": [("GET", "/api/health", 200, None)],
    "api/me": [("GET", "/api/me", 401, "unauthorized")],
    # The reconciler refuses a call without QStash's signature before touching Redis or the DB.
    "api/reconcile": [("POST", "/api/reconcile", 401, "unauthorized")],
    "api/uploads": [("POST", "/api/uploads", 401, "unauthorized")],
    # Each rewritten path too (`/api/events?id=...`): Vercel routes a backend-framework
    # project's rewrites with it, and api/_local.py's rewritten_app does the same.
    "api/openapi": [
        ("GET", "/api/openapi.json", 200, None),
        ("GET", "/api/docs", 200, None),
        ("GET", "/api/openapi", 200, None),
        ("GET", "/api/openapi?page=docs&path=init.js", 200, None),
    ],
    "api/jobs": [
        ("GET", f"/api/jobs/{job}?id={job}", 401, "unauthorized"),
        ("POST", f"/api/jobs/{job}/cancel?action=cancel&id={job}", 401, "unauthorized"),
        ("GET", "/api/jobs?limit=5", 401, "unauthorized"),
        ("POST", "/api/jobs", 401, "unauthorized"),
        ("GET", f"/api/jobs?id={job}", 401, "unauthorized"),
        ("POST", f"/api/jobs?action=cancel&id={job}", 401, "unauthorized"),
        ("POST", f"/api/jobs?id={job}", 405, "method_not_allowed"),
    ],
    "api/events": [
        ("GET", f"/api/jobs/{job}/events?id={job}", 401, "unauthorized"),
        ("GET", f"/api/events?id={job}", 401, "unauthorized"),
    ],
}[name]
import vc__handler__python as handler  # noqa: E402 - the function's entry point

failed = []
for method, path, status, code in cases:
    event = {
        "body": json.dumps(
            {"method": method, "path": path, "headers": {"host": "x.vercel.app"}, "body": ""}
        )
    }
    result = handler.vc_handler(event, None)
    got_code = None
    if result["statusCode"] >= 400:
        got_code = json.loads(result["body"])["error"]["code"]
    ok = result["statusCode"] == status and got_code == code
    print(f"  {name}.func {method} {path} -> {result['statusCode']} {got_code or ''}".rstrip())
    if not ok:
        failed.append(
            f"{method} {path}: {result['statusCode']} {result['body'][:200]}, want {status} {code}"
        )
sys.stdout.flush()
print("\n".join(failed), file=sys.stderr)
# Skip the runtime's atexit hook, which waits 15 s for its server thread.
os._exit(1 if failed else 0)
