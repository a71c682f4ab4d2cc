"""The compose step of `make check-deploy`: the services, ports and settings of docker-compose.yml
and, laid out as on the VPS, docker-compose.prod.yml (both as `docker-compose config` prints them).

    python compose_services.py LOCAL.yml PROD.yml ROOT   (run by the tools venv, which has PyYAML)
"""

import sys

import yaml

local = yaml.safe_load(open(sys.argv[1]))["services"]
prod = yaml.safe_load(open(sys.argv[2]))["services"]
root = sys.argv[3]
problems = []


def host_ports(service):
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((int(port["published"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            out.append((int(parts[-2]), int(parts[-1])))
    return out


want = {"redis", "redis-http", "qstash", "postgres", "migrate", "llm", "local-worker", "producer"}
if set(local) != want:
    problems.append(f"local services are {sorted(local)}, want {sorted(want)}")
published = [p for s in local.values() for p, _ in host_ports(s)]
if len(published) != len(set(published)):
    problems.append(f"local host ports clash: {sorted(published)}")
expect = {"producer": (3000, 3000), "qstash": (8081, 8080)}
for name, pair in expect.items():
    if pair not in host_ports(local.get(name, {})):
        problems.append(f"{name} must publish host {pair[0]} -> {pair[1]}")
for name in ("migrate", "llm", "local-worker", "producer"):
    build = local.get(name, {}).get("build", {})
    context = build.get("context") if isinstance(build, dict) else build
    if context != root:
        problems.append(f"{name} must be built from the Dockerfile at {root}, not {context!r}")
if "migrate.apply" not in " ".join(local.get("migrate", {}).get("command", [])):
    problems.append("migrate must run lib.store.migrate.apply")
if local.get("qstash", {}).get("command") != ["qstash", "dev"]:
    problems.append("qstash must run `qstash dev`")
if local.get("redis-http", {}).get("environment", {}).get("SRH_MODE") != "env":
    problems.append("redis-http must have SRH_MODE=env")
worker = local.get("local-worker", {})
env = worker.get("environment", {})
# The public dev keys of `qstash dev` are accepted on loopback only: the worker shares QStash's
# network namespace, binds 127.0.0.1 and QStash delivers there.
if worker.get("network_mode") != "service:qstash" or worker.get("ports"):
    problems.append("local-worker: network_mode service:qstash, no published port")
if (
    env.get("HOST") != "127.0.0.1"
    or env.get("WORKER_URL") != f"http://127.0.0.1:{env.get('PORT')}"
    or not env.get("UPSTASH_REDIS_REST_URL")
):
    problems.append("local-worker: HOST 127.0.0.1, WORKER_URL on its PORT, Redis over REST")

if set(prod) != {"worker", "caddy"}:
    problems.append(f"prod services are {sorted(prod)}, want worker and caddy")
worker, caddy = prod.get("worker", {}), prod.get("caddy", {})
if worker.get("ports"):
    problems.append("the prod worker must not publish ports (only Caddy does)")
if worker.get("deploy", {}).get("replicas") != 3:
    problems.append("the prod worker's replicas must come from WORKER_REPLICAS")
if worker.get("image") != "ghcr.io/example/careershaper-jobs:sha-0000000":
    problems.append("the prod worker's image must come from CS_IMAGE")
for name, service in prod.items():
    if service.get("restart") != "unless-stopped":
        problems.append(f"prod {name}: restart: unless-stopped")
    options = service.get("logging", {}).get("options", {})
    if not (options.get("max-size") and options.get("max-file")):
        problems.append(f"prod {name}: rotated logs (max-size, max-file)")
if sorted(p for p, _ in host_ports(caddy)) != [80, 443, 443]:
    problems.append(f"prod caddy must publish 80 and 443 only, not {host_ports(caddy)}")
if caddy.get("environment", {}).get("CS_DOMAIN") != "worker.example.com":
    problems.append("prod caddy: CS_DOMAIN from the .env")
grace = str(worker.get("stop_grace_period", "0s"))
if int(grace.rstrip("s") or 0) < 35:
    problems.append("prod worker: stop_grace_period >= WORKER_DRAIN_SECONDS + 15 (35 s)")
if problems:
    sys.exit("compose: " + "\n  ".join(problems))
print(
    "compose: local", len(local), "services, host ports", sorted(published), "; prod worker + caddy"
)
