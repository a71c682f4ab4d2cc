"""gunicorn settings for the worker: many concurrent, long-held LLM requests per process.

Each delivery is held for the job's whole run (10 s to 7 min), mostly waiting on the LLM's
stream. gevent (the default) runs them as greenlets on one hub per process; gthread as threads.
See docs/performance.md for the gthread/gevent measurements behind the default. With gevent,
psycopg must be imported after gunicorn patches (it is: the master never imports it; do not
set `preload_app`). Everything comes from the environment
(HOST, PORT, WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_WORKER_CLASS) through lib.config.
HOST defaults to loopback in development and to every interface otherwise (the Docker image):
the worker refuses the public dev signing keys unless it binds loopback.
"""

import os
import shutil
import signal
import sys
import tempfile

from lib.config import load as _load_settings
from lib.config_checks import is_loopback as _is_loopback
from lib.config_checks import public_dev_values as _public_dev_values

_settings = _load_settings("any")

bind = f"{_settings.bind_host}:{_settings.port}"
workers = _settings.web_concurrency
worker_class = _settings.gunicorn_worker_class
threads = _settings.gunicorn_threads
worker_connections = _settings.gunicorn_threads + 100
# The timeout is the worker's heartbeat to the master, not a request limit: a 7-minute job is fine.
timeout = 60
# SIGTERM: in-flight jobs get WORKER_DRAIN_SECONDS to finish, then answer the broker retryably;
# gunicorn waits a little longer than that before it kills the process.
graceful_timeout = int(_settings.worker_drain_seconds) + 15
keepalive = 5
# gunicorn >= 25's control socket (`gunicornc`) is not used, and under the image's read-only root
# and home (/nonexistent) it logs an error at every start: off.
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()

_metrics_dir = _settings.prometheus_multiproc_dir or os.path.join(
    tempfile.gettempdir(), f"cs-metrics-{os.getpid()}"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server):  # noqa: ARG001
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def when_ready(server):
    """The public dev signing keys only behind loopback listeners, even when a `--bind` on the
    command line overrode HOST (lib/config.py checks HOST alone)."""
    dev_keys = _public_dev_values(_settings, "worker")
    exposed = [
        str(listener)
        for listener in server.LISTENERS
        if isinstance(listener.cfg_addr, tuple) and not _is_loopback(str(listener.cfg_addr[0]))
    ]
    if dev_keys and exposed:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
        sys.exit(
            f"invalid configuration:\n  - {', '.join(dev_keys)}: public dev values, accepted "
            f"only on loopback (listening at {', '.join(exposed)})"
        )


def post_worker_init(worker):
    """Chain a drain onto gunicorn's SIGTERM handler: stop taking work, finish what runs."""
    executor = worker.wsgi.extensions["executor"]
    original = worker.handle_exit

    def handle_term(sig, frame):
        executor.drain()
        original(sig, frame)

    signal.signal(signal.SIGTERM, handle_term)


def worker_exit(server, worker):  # noqa: ARG001
    """Detached mode: the jobs run in background threads, not in requests, so gunicorn's
    graceful stop would not wait for them. Wait here (in the worker process, before it exits):
    they get WORKER_DRAIN_SECONDS, then stop with worker_shutting_down and are re-published.
    Within graceful_timeout, so the master never SIGKILLs a draining worker. No `max_requests`
    is set: a recycled worker would exit through this same hook."""
    app = getattr(worker, "wsgi", None)
    detached = app.extensions.get("detached") if app is not None else None
    if detached is not None:
        detached.shutdown(_settings.worker_drain_seconds + 10)


def child_exit(server, worker):  # noqa: ARG001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ARG001
    shutil.rmtree(_metrics_dir, ignore_errors=True)
