"""`make check-deploy`'s caddy step, run for real: deploy/Caddyfile in front of a stand-in worker.

    python -m scripts.deploycheck.caddy CADDY_BINARY WORK_DIR

The Caddyfile is adapted to JSON by the real caddy (`caddy adapt`), served over plain HTTP on
a loopback port (the site address comes from CS_DOMAIN, so only the scheme and port differ from
production; the admin API is turned off), with the upstream pointing at a local HTTP server
that records what reaches it. Checks:
- a body over `request_body max_size` is refused and never reaches the worker, one under it does;
- `/metrics` answers 404 even to a loopback client, and never reaches the worker;
- the access log has the request but neither Upstash-Signature nor Authorization, and nor has
  Caddy's own log when it logs a proxy error (the worker down) with the request's headers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from scripts.stack import embedded

ROOT = Path(__file__).resolve().parents[2]
SIGNATURE = "eyJhbGciOiJIUzI1NiJ9.check-caddy-signature.sig"
BEARER = "Bearer check-caddy-credential"


class Recorder(BaseHTTPRequestHandler):
    """The worker's stand-in: answers 200 and records each request's path and body size."""

    seen: list[tuple[str, int]] = []

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(size)
        self.seen.append((self.path, size))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def main(caddy: str, work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = embedded.free_port()
    env = {
        **os.environ,
        "CS_DOMAIN": f"http://127.0.0.1:{port}",
        "CS_UPSTREAM_HOST": "127.0.0.1",
        "CS_UPSTREAM_PORT": str(upstream.server_address[1]),
        "XDG_DATA_HOME": str(work / "data"),
        "XDG_CONFIG_HOME": str(work / "config"),
    }
    adapted = subprocess.run(
        [caddy, "adapt", "--adapter", "caddyfile", "--config", str(ROOT / "deploy/Caddyfile")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    config = json.loads(adapted.stdout)
    config["admin"] = {"disabled": True}  # no fixed admin port (2019) on a shared machine
    (work / "caddy.json").write_text(json.dumps(config))
    log = open(work / "caddy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [caddy, "run", "--config", str(work / "caddy.json")], env=env, stdout=log, stderr=log
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    problems = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((work / "caddy.log").read_text()[-3000:]) from None
                time.sleep(0.1)
        credentials = {"Upstash-Signature": SIGNATURE, "Authorization": BEARER}
        small = httpx.post(f"{base}/v1/execute", content=b"x" * 4096, headers=credentials)
        big = httpx.post(f"{base}/v1/failed", content=b"x" * 200_000, headers=credentials)
        metrics = [httpx.get(f"{base}{path}").status_code for path in ("/metrics", "/metrics/")]
        if small.status_code != 200 or ("/v1/execute", 4096) not in Recorder.seen:
            problems.append(f"a 4 KB delivery -> {small.status_code}, want it proxied")
        if big.status_code < 400 or any(path == "/v1/failed" for path, _ in Recorder.seen):
            problems.append(
                f"a 200 KB body -> {big.status_code}, and reached the worker: want it refused"
            )
        # The worker down: Caddy's error log has the request's headers, so it is filtered too.
        upstream.shutdown()
        upstream.server_close()
        down = httpx.post(f"{base}/v1/execute", content=b"{}", headers=credentials, timeout=30)
        if down.status_code != 502:
            problems.append(f"a delivery with the worker down -> {down.status_code}, want 502")
        if metrics != [404, 404] or any(path.startswith("/metrics") for path, _ in Recorder.seen):
            problems.append(f"/metrics from loopback -> {metrics}: want 404, never proxied")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (work / "caddy.log").read_text(errors="replace")
    access = [line for line in text.splitlines() if '"/v1/execute"' in line]
    if not access:
        problems.append("no access log line for /v1/execute")
    for secret in (SIGNATURE, BEARER, "check-caddy-credential"):
        if secret in text:
            problems.append(f"the access log has {secret[:20]}...")
    if problems:
        sys.exit("deploy/Caddyfile, served by caddy:\n  " + "\n  ".join(problems))
    print(
        f"caddy: a 200 KB body -> {big.status_code} (not proxied), 4 KB -> 200; /metrics from "
        "loopback -> 404 (not proxied); access and error logs without Upstash-Signature or "
        "Authorization"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
