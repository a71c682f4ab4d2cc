# CareerShaper Jobs. `make demo` and `make test` work on a fresh machine with Python 3.11/3.12.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The stack profile of `make demo` / `make dev`: local (TCP Redis and Postgres everywhere) or
# cloud (each part as in production: the producer on Upstash REST, supabase-py and vercel.json's
# rewrites through local stand-ins; the worker on TCP Redis under a session-pooler-sized cap).
PROFILE ?= local
WORKERS ?= 1

.PHONY: help install demo dev test test-browser check-deploy chaos bench lint format lock clean

help:
	@echo "make demo   run one job of each kind on a local stack, then stop (PROFILE=local|cloud)"
	@echo "make dev    run the local stack until Ctrl-C (PROFILE=local|cloud, WORKERS=1|2 boxes)"
	@echo "make test   run the whole test suite (real Redis and Postgres, embedded)"
	@echo "make test-browser  the demo page in headless Chromium"
	@echo "make check-deploy  validate Dockerfile, compose, Caddy, Vercel build, deploy scripts; build and run the image"
	@echo "make chaos  fault injection under load, inline and detached modes at once (< 17 min)"
	@echo "make bench  latency and cost per job against the original design (about 25 min)"
	@echo "make lint   ruff check, ruff format --check and mypy"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[worker,cli,dev,test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m scripts.stack.devstack demo --profile $(PROFILE)

dev: $(STAMP)
	$(PY) -m scripts.stack.devstack dev --profile $(PROFILE) --workers $(WORKERS)

test: $(STAMP)
	$(PY) -m pytest

# The demo page in headless Chromium (Debian's chromium, installed by scripts/install-browser).
test-browser: $(STAMP)
	scripts/install-browser
	$(PY) -m pytest -m browser

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Deployment files checked offline: hadolint, compose config, shellcheck, actionlint, caddy (served),
# sshd -T, systemd, `vercel build`, scripts/deploy against stand-ins, a container-equivalent smoke
# test, and the real image (Docker, else podman from Debian's packages: scripts/install-podman).
check-deploy: $(STAMP)
	scripts/check-deploy

# Fault injection under load on the local stack, every scenario in both execution modes, the two
# at once (< 17 min; `--serial` one after the other; `python -m scripts.chaos --mode inline` for
# one mode); exits non-zero on any violation.
# The clock-skew scenarios run the worker under libfaketime (Debian's faketime, installed here).
chaos: $(STAMP)
	scripts/install-faketime
	$(PY) -m scripts.chaos

# Latency and cost per job, ours against the original design: bench/results.json and plots.
# `make bench BENCH_ARGS=--quick` is a smoke run of every section (~5 min).
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m scripts.bench $(BENCH_ARGS)

# Pinned dependency sets: requirements.txt is what Vercel installs for api/ (no openai,
# gunicorn or prometheus); worker/requirements.txt is what the worker image installs.
lock: $(STAMP)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --quiet --no-header --python-version 3.12 -o requirements.txt
	$(VENV)/bin/uv pip compile pyproject.toml --quiet --no-header --extra worker --python-version 3.11 -o worker/requirements.txt

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .devstack .pytest_cache .mypy_cache .ruff_cache *.egg-info
