# syntax=docker/dockerfile:1
# The worker image: gunicorn serving worker.wsgi:app (QStash's delivery target).
#
#   docker build -t careershaper-worker .
#   docker run --env-file .env.production -p 127.0.0.1:8080:8080 careershaper-worker
#
# It installs exactly worker/requirements.txt (the pinned worker set, `make lock`), then this
# project without dependencies. PORT, WEB_CONCURRENCY, GUNICORN_THREADS and every other
# setting come from the environment (lib/config.py, .env.example). `make check-deploy` builds
# this file as it is (Docker, or podman from Debian's packages) and runs the image read-only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY worker/requirements.txt worker/requirements.txt
RUN pip install --no-cache-dir -r worker/requirements.txt
COPY pyproject.toml README.md ./
COPY lib lib
COPY worker worker
RUN pip install --no-cache-dir --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# The run directory: gunicorn reads worker/gunicorn.conf.py from here, and
# `python -c "from lib.store import migrate; ..."` finds supabase/migrations beside lib/.
# Owned by root and read-only to the app user.
WORKDIR /app
COPY lib lib
COPY worker worker
COPY supabase supabase
USER 10001:10001
EXPOSE 8080
# Liveness only (/readyz also needs Redis and the database). There is no curl in a slim image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]
CMD ["gunicorn", "-c", "worker/gunicorn.conf.py", "worker.wsgi:app"]
