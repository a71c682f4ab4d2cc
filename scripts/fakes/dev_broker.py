"""A QStash-compatible dev broker: in memory, no Docker, the token and signing keys of `qstash dev`.

Run it with `python -m scripts.fakes.dev_broker --host 127.0.0.1 --port 8081`. `QSTASH_TOKEN`,
`QSTASH_CURRENT_SIGNING_KEY` and `QSTASH_NEXT_SIGNING_KEY` override the dev defaults;
`DEV_BROKER_TIME_SCALE` (default 1) shortens delays, and `--time-scale` wins over it.
`QSTASH_PLAN` (default `payg`; `--plan` wins) sets the limits it enforces as QStash does: the
account-wide parallelism, the retry maximum and the response-time limit (lib/queue/plans.py).

Publishes are parsed by `scripts.fakes.dev_broker_publish`, delivered by
`scripts.fakes.dev_broker_core`.
REST API, as the official SDK calls it (https://upstash.com/docs/qstash/api-reference):
`POST /v2/publish/<url>`, `GET|DELETE /v2/messages/<id>`, `DELETE /v2/messages`, `GET|DELETE
/v2/dlq`, `GET|DELETE /v2/dlq/<dlqId>`, `GET /v2/keys`, and QStash Schedules (`POST
/v2/schedules/<url>`, `GET /v2/schedules[/<id>]`, `DELETE /v2/schedules/<id>`:
scripts.fakes.dev_broker_schedules); plus the dev-only `GET /v2/_dev/stats` (counters), the fault
switch `POST /v2/_dev/drop-publishes {"count": N}` (lose the next N publishes) and `GET
/healthz`. Each publish and each delivery attempt is logged on one line with the message id,
destination (no query string), attempt and status; never bodies or tokens.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any, NoReturn

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.serving import make_server

from lib.queue.plans import DEFAULT_PLAN, PLANS, Plan, plan
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN
from scripts.fakes.dev_broker_core import Broker
from scripts.fakes.dev_broker_model import RuleError
from scripts.fakes.dev_broker_publish import parse_publish
from scripts.fakes.dev_broker_schedules import install as install_schedules

log = logging.getLogger("dev_broker")

DLQ_PAGE_MAX = 100


def _error(status: int, message: str) -> Response:
    resp = jsonify(error=message)
    resp.status_code = status
    return resp


def _dlq_page(broker: Broker, args: Mapping[str, str]) -> dict[str, Any]:
    filters = {name: args[name] for name in ("messageId", "url", "label") if name in args}
    entries = [
        entry
        for entry in broker.dlq_list()
        if all(entry.get(name) == value for name, value in filters.items())
        and ("responseStatus" not in args or str(entry["responseStatus"]) == args["responseStatus"])
    ]
    if args.get("order", "latestFirst") == "latestFirst":
        entries.reverse()
    start = int(args["cursor"]) if args.get("cursor", "").isdigit() else 0
    count = min(int(args["count"]), DLQ_PAGE_MAX) if args.get("count", "").isdigit() else 100
    page: dict[str, Any] = {"messages": entries[start : start + count]}
    if start + count < len(entries):
        page["cursor"] = str(start + count)
    return page


api = Blueprint("dev_broker", __name__)


def _broker() -> Broker:
    broker: Broker = current_app.extensions["dev_broker"]
    return broker


def _bad_request(exc: RuleError) -> Response:
    return _error(400, str(exc))


def _not_found(_exc: Exception) -> Response:
    return _error(404, "not found")


def _not_allowed(_exc: Exception) -> Response:
    return _error(405, "method not allowed")


def _authenticate() -> Response | None:
    if not request.path.startswith("/v2/"):
        return None
    token: str = current_app.config["QSTASH_TOKEN"]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return _error(401, "invalid or missing bearer token")
    return None


@api.post("/v2/publish/<path:_destination>")
def publish(_destination: str) -> Response:
    broker = _broker()
    message, dedup_key = parse_publish(
        request.environ,
        request.headers,
        request.get_data(),
        time_scale=broker.time_scale,
        caller_ip=request.remote_addr,
        limits=broker.plan,
    )
    message_id, deduplicated = broker.publish(message, dedup_key)
    resp = jsonify(messageId=message_id, deduplicated=deduplicated)
    # QStash answers a duplicate with 202 Accepted and the first message's id.
    resp.status_code = 202 if deduplicated else 200
    return resp


@api.get("/v2/messages/<message_id>")
def get_message(message_id: str) -> Response:
    found = _broker().get(message_id)
    return jsonify(found) if found is not None else _error(404, "message not found")


@api.delete("/v2/messages/<message_id>")
def cancel_message(message_id: str) -> Response:
    if not _broker().cancel(message_id):
        return _error(404, "message not found or already finished")
    return Response("OK", status=202, mimetype="text/plain")


@api.delete("/v2/messages")
def cancel_messages() -> Response:
    ids = (request.get_json(silent=True) or {}).get("messageIds")
    return jsonify(cancelled=_broker().cancel_many(ids))


@api.get("/v2/dlq")
def list_dlq() -> Response:
    return jsonify(_dlq_page(_broker(), request.args))


@api.delete("/v2/dlq")
def delete_dlq_many() -> Response:
    ids = (request.get_json(silent=True) or {}).get("dlqIds") or []
    return jsonify(deleted=sum(1 for dlq_id in ids if _broker().dlq_delete(dlq_id)))


@api.get("/v2/dlq/<dlq_id>")
def get_dlq(dlq_id: str) -> Response:
    entry = _broker().dlq_get(dlq_id)
    return jsonify(entry) if entry is not None else _error(404, "DLQ message not found")


@api.delete("/v2/dlq/<dlq_id>")
def delete_dlq(dlq_id: str) -> Response:
    if not _broker().dlq_delete(dlq_id):
        return _error(404, "DLQ message not found")
    return Response(status=200)


@api.get("/v2/keys")
def keys() -> Response:
    return jsonify(current_app.config["QSTASH_SIGNING_KEYS"])


@api.post("/v2/_dev/drop-publishes")
def drop_publishes() -> Response:
    """Fault switch (dev only): accept the next `count` publishes and lose them, as a message
    lost between the broker and the worker (the reconciler heals it)."""
    count = (request.get_json(silent=True) or {}).get("count")
    if not isinstance(count, int) or count < 0:
        return _error(400, "count must be a non-negative integer")
    _broker().drop_publishes = count
    return jsonify(dropping=count)


@api.get("/v2/_dev/stats")
def stats() -> Response:
    return jsonify(_broker().stats())


@api.get("/healthz")
def healthz() -> Response:
    return Response("ok", mimetype="text/plain")


def create_app(
    *,
    token: str = DEV_TOKEN,
    current_signing_key: str = DEV_CURRENT_SIGNING_KEY,
    next_signing_key: str = DEV_NEXT_SIGNING_KEY,
    time_scale: float = 1.0,
    limits: str | Plan = DEFAULT_PLAN,
) -> Flask:
    """Return the broker's WSGI app with its scheduler already running.

    `time_scale` multiplies the default backoff, `Upstash-Retry-Delay` and `Upstash-Delay`; it
    never changes `Upstash-Not-Before`, a destination's `Retry-After`, timeouts or flow-control
    periods. `limits` is the QStash plan (a name from lib/queue/plans.py, or a Plan) whose
    account-wide parallelism, retry maximum and response-time limit the broker enforces. Call
    `app.broker.stop()` (the same object as `app.extensions["dev_broker"]`) to stop scheduling.
    Raises ValueError when `time_scale` is not positive or the plan is unknown.
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be positive")
    account = limits if isinstance(limits, Plan) else plan(limits)
    broker = Broker(signing_key=current_signing_key, time_scale=time_scale, limits=account)
    app = Flask(__name__)
    app.url_map.merge_slashes = False
    app.config["QSTASH_TOKEN"] = token
    app.config["QSTASH_SIGNING_KEYS"] = {"current": current_signing_key, "next": next_signing_key}
    app.extensions["dev_broker"] = broker
    app.broker = broker  # type: ignore[attr-defined]
    app.register_error_handler(RuleError, _bad_request)
    app.register_error_handler(404, _not_found)
    app.register_error_handler(405, _not_allowed)
    app.before_request(_authenticate)
    app.register_blueprint(api)
    broker.start()
    app.schedules = install_schedules(app, broker)  # type: ignore[attr-defined]
    return app


def _sigterm(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    """Serve the dev broker (werkzeug, threaded) until interrupted or sent SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m scripts.fakes.dev_broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="multiply retry delays and Upstash-Delay (default: $DEV_BROKER_TIME_SCALE or 1)",
    )
    parser.add_argument(
        "--plan",
        choices=sorted(PLANS),
        default=None,
        help=f"the QStash plan whose limits apply (default: $QSTASH_PLAN or {DEFAULT_PLAN})",
    )
    args = parser.parse_args(argv)
    plan_name = args.plan or os.environ.get("QSTASH_PLAN") or DEFAULT_PLAN
    if plan_name not in PLANS:
        parser.error(f"QSTASH_PLAN must be one of {', '.join(PLANS)}")
    env_scale = os.environ.get("DEV_BROKER_TIME_SCALE", "")
    try:
        time_scale = args.time_scale if args.time_scale is not None else float(env_scale or 1.0)
    except ValueError:
        parser.error("DEV_BROKER_TIME_SCALE must be a number")
    if time_scale <= 0:
        parser.error("the time scale must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # werkzeug's access log would print every destination URL with its query string.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(
        token=os.environ.get("QSTASH_TOKEN") or DEV_TOKEN,
        current_signing_key=os.environ.get("QSTASH_CURRENT_SIGNING_KEY") or DEV_CURRENT_SIGNING_KEY,
        next_signing_key=os.environ.get("QSTASH_NEXT_SIGNING_KEY") or DEV_NEXT_SIGNING_KEY,
        time_scale=time_scale,
        limits=plan_name,
    )
    server = make_server(args.host, args.port, app, threaded=True)
    signal.signal(signal.SIGTERM, _sigterm)
    log.info(
        "dev broker on http://%s:%d time_scale=%g plan=%s",
        args.host,
        server.port,
        time_scale,
        plan_name,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["dev_broker"].stop()
        app.extensions["dev_broker_schedules"].stop()
        server.server_close()


if __name__ == "__main__":
    main()
