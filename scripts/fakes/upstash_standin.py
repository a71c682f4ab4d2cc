"""Upstash Redis REST API stand-in: a local HTTP server that forwards every command to a real Redis.

It speaks the documented REST protocol (https://upstash.com/docs/redis/features/restapi), so the
official `upstash_redis.Redis(url=..., token=...)` client works against it unchanged:

- `POST /` with a JSON array command answers `{"result": ...}`, or `{"error": "ERR ..."}` with 400.
- `POST /pipeline` and `POST /multi-exec` take an array of commands and answer an array of
  `{"result"}` / `{"error"}`; `/multi-exec` runs them inside MULTI/EXEC.
- `GET|POST|PUT /<command>/<arg>/...` is the path form; a POST body is the last argument, and query
  parameters (`?EX=100`) follow it.
- `POST /subscribe/<channel>` (and `/psubscribe/<pattern>`) stream Server-Sent Events:
  `data: subscribe,<channel>,1`, then `data: message,<channel>,<payload>`. Upstash documents
  these endpoints as POST ("Subscribe & Publish Commands" in restapi.mdx) and the official
  TypeScript SDK sends every request, `/subscribe` included, as POST (redis-js
  `packages/redis/pkg/http.ts`, `method: "POST"`), so a GET is refused with 405, the status the
  docs give for a method the API does not serve.
- `Upstash-Encoding: base64` base64-encodes every string in a result except the status "OK".
- `Authorization: Bearer <token>` (or `?_token=`) is required; otherwise 401
  `{"error": "Unauthorized"}`.

A fault switch (`set_fault`, or `PUT`/`DELETE /_standin/fault` over HTTP) makes the stand-in
answer as the real service does when it cannot serve a request (`Fault`): the daily request
limit error, an edge 5xx with an HTML body, or a hang past the client's timeout.

Commands that Upstash REST does not serve (blocking reads, WATCH, subscriptions outside
`/subscribe`, connection state) are refused with an error, as the real service does.

Command arguments carry user data, so nothing here logs them.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from redis._parsers import _RESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from scripts.fakes.pacing import ENV_DELAY, PACING, Paced
from scripts.fakes.upstash_commands import (
    CommandError,
    body_json,
    parse_command,
    parse_commands,
    path_args,
)
from scripts.fakes.upstash_faults import Command, Fault, FaultSwitch
from scripts.fakes.upstash_wire import Arg, Reply, render, run, sse_events

log = logging.getLogger("upstash_standin")

EXTENSION = "upstash_standin"
FAULT_PATH = "/_standin/fault"
KEEPALIVE_SECONDS = 15.0
_JSON = "application/json"


class _VerbatimErrorParser(_RESP2Parser):
    """A RESP2 parser that keeps error lines whole, as Upstash relays them.

    redis-py strips a known prefix ("ERR value is not an integer" becomes "value is not an
    integer") and maps it to an exception class; REST clients expect the original text.
    """

    @classmethod
    def parse_error(cls, response: str) -> ResponseError:
        return ResponseError(response)


@dataclass
class _State:
    pool: redis.ConnectionPool
    token: str
    keepalive_seconds: float
    faults: FaultSwitch


def create_app(
    redis_url: str,
    token: str,
    *,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
    hang_seconds: float = 60.0,
    delay_ms: float = 0.0,
) -> Flask:
    """Build the stand-in for the Redis at `redis_url`, guarded by the bearer `token`.

    `keepalive_seconds` is the longest silence on a subscription stream before a comment line
    goes out; writing it is also how a vanished client is noticed. `hang_seconds` bounds how
    long a `hang` fault holds a request. `delay_ms` is added to every request, as the distance to
    Upstash would be; `app.extensions["pacing"]` counts requests (scripts/fakes/pacing.py). Call
    `close(app)` to release the Redis connections. Raises ValueError for an empty token.
    """
    if not token:
        raise ValueError("the stand-in needs a non-empty token")
    app = Flask(__name__)
    # RESP2, because the REST API answers in RESP2 shapes (flat HGETALL, string scores).
    pool = redis.ConnectionPool.from_url(
        redis_url, protocol=2, parser_class=_VerbatimErrorParser, socket_timeout=60
    )
    app.extensions[EXTENSION] = _State(
        pool=pool,
        token=token,
        keepalive_seconds=keepalive_seconds,
        faults=FaultSwitch(hang_seconds),
    )
    app.before_request(_authenticate)
    app.before_request(_inject_fault)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(RedisConnectionError, _redis_down)
    app.register_error_handler(RedisTimeoutError, _redis_down)
    app.add_url_rule("/", view_func=_single, methods=["GET", "POST", "PUT"])
    app.add_url_rule("/pipeline", view_func=_pipeline, methods=["POST"])
    app.add_url_rule("/multi-exec", view_func=_multi_exec, methods=["POST"])
    app.add_url_rule(FAULT_PATH, view_func=_fault_control, methods=["GET", "PUT", "DELETE"])
    # GET is routed here too, so that it is refused with 405 rather than run by the path form.
    app.add_url_rule("/subscribe/<path:names>", view_func=_subscribe, methods=["GET", "POST"])
    app.add_url_rule("/psubscribe/<path:names>", view_func=_psubscribe, methods=["GET", "POST"])
    app.add_url_rule("/<path:_>", view_func=_path_form, methods=["GET", "POST", "PUT"])
    app.extensions[PACING] = Paced(app.wsgi_app, delay_ms)
    app.wsgi_app = app.extensions[PACING]  # type: ignore[method-assign]
    return app


def close(app: Flask) -> None:
    """Release the stand-in's Redis connections and any request a `hang` fault holds."""
    state: _State = app.extensions[EXTENSION]
    state.faults.set(None)
    state.pool.disconnect()


def set_fault(app: Flask, fault: Fault | None) -> None:
    """Answer every matching request with `fault` from now on; None serves normally again."""
    state: _State = app.extensions[EXTENSION]
    state.faults.set(fault)


def fault_hits(app: Flask) -> int:
    """How many requests met a fault since the stand-in started."""
    state: _State = app.extensions[EXTENSION]
    return state.faults.hits


def _state() -> _State:
    state: _State = current_app.extensions[EXTENSION]
    return state


def _authenticate() -> Response | None:
    header = request.headers.get("Authorization", "")
    supplied = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    supplied = supplied or request.args.get("_token", "")
    if hmac.compare_digest(supplied.encode(), _state().token.encode()):
        return None
    return _json({"error": "Unauthorized"}, 401)


def _inject_fault() -> Response | None:
    if request.path == FAULT_PATH:
        return None
    faults = _state().faults
    met = faults.take(_request_commands())
    if met is None:
        return None
    log.info("answering with the %s fault", met[0].kind)
    return faults.answer(*met)


def _request_commands() -> list[Command]:
    """The commands a request carries, as far as they parse (for matching a fault)."""
    path = request.path
    if path.startswith(("/subscribe/", "/psubscribe/")):
        return []
    try:
        if path == "/":
            return [parse_command(body_json())]
        if path in ("/pipeline", "/multi-exec"):
            return [c for c in parse_commands(body_json()) if not isinstance(c, CommandError)]
        return [parse_command(path_args())]
    except CommandError:
        return []


def _fault_control() -> Response:
    """The fault switch over HTTP: PUT a fault's JSON, DELETE it, GET it and the hit count."""
    faults = _state().faults
    if request.method == "PUT":
        try:
            faults.set(Fault.from_json(request.get_json(silent=True)))
        except ValueError as exc:
            return _json({"error": f"ERR {exc}"}, 400)
    elif request.method == "DELETE":
        faults.set(None)
    return _json(faults.describe())


def _http_error(exc: HTTPException) -> Response:
    return _json({"error": f"ERR {exc.description}"}, exc.code or 400)


def _redis_down(exc: Exception) -> Response:
    log.warning("redis unreachable: %s", type(exc).__name__)
    return _json({"error": "ERR the backing Redis is unreachable"}, 503)


def _single() -> Response:
    try:
        command = parse_command(body_json())
    except CommandError as exc:
        return _json({"error": str(exc)}, 400)
    return _one(command)


def _path_form(_: str) -> Response:
    try:
        command = parse_command(path_args())
    except CommandError as exc:
        return _json({"error": str(exc)}, 400)
    return _one(command)


def _one(command: tuple[Arg, ...]) -> Response:
    reply = run(_state().pool, [command])[0]
    if isinstance(reply, ResponseError):
        return _json({"error": str(reply)}, 400)
    return _json({"result": render(reply, _base64())})


def _pipeline() -> Response:
    try:
        commands = parse_commands(body_json())
    except CommandError as exc:
        return _json({"error": str(exc)}, 400)
    # A refused command fails alone; the others still run, in order, as in Upstash.
    replies = iter(run(_state().pool, [c for c in commands if not isinstance(c, CommandError)]))
    return _json([_entry(c if isinstance(c, CommandError) else next(replies)) for c in commands])


def _multi_exec() -> Response:
    try:
        parsed = parse_commands(body_json())
        refused = next((c for c in parsed if isinstance(c, CommandError)), None)
        if refused is not None:
            raise refused
    except CommandError as exc:
        # One unsupported command discards the whole transaction, as documented.
        return _json({"error": str(exc)}, 400)
    commands = [c for c in parsed if not isinstance(c, CommandError)]
    replies = run(_state().pool, [("MULTI",), *commands, ("EXEC",)])
    queued, outcome = replies[1:-1], replies[-1]
    if isinstance(outcome, ResponseError):
        # Discarded by Redis (EXECABORT): report the queuing error that caused it.
        cause = next((r for r in queued if isinstance(r, ResponseError)), outcome)
        return _json({"error": str(cause)}, 400)
    return _json([_entry(r) for r in outcome])


def _subscribe(names: str) -> Response:
    return _stream("subscribe", names)


def _psubscribe(names: str) -> Response:
    return _stream("psubscribe", names)


def _post_only() -> Response | None:
    # Upstash documents only POST here (see the module docstring); the docs answer a method
    # the API does not serve with 405, so a client that sends GET learns it in tests.
    if request.method == "POST":
        return None
    response = _json({"error": f"ERR {request.method} is not allowed here; use POST"}, 405)
    response.headers["Allow"] = "POST"
    return response


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=_JSON)


def _base64() -> bool:
    return request.headers.get("Upstash-Encoding", "").lower() == "base64"


def _entry(reply: Reply | CommandError) -> dict[str, Any]:
    if isinstance(reply, (ResponseError, CommandError)):
        return {"error": str(reply)}
    return {"result": render(reply, _base64())}


def _stream(kind: str, path: str) -> Response:
    refused = _post_only()
    if refused is not None:
        return refused
    names = [n for n in path.split("/") if n]
    if not names:
        return _json({"error": "ERR name at least one channel"}, 400)
    state = _state()
    pubsub = redis.Redis(connection_pool=state.pool).pubsub()
    try:
        getattr(pubsub, kind)(*names)
    except BaseException:
        pubsub.close()
        raise
    log.info("%s to %d channel(s)", kind, len(names))
    return Response(
        sse_events(pubsub, state.keepalive_seconds),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the stand-in until interrupted; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fakes.upstash_standin",
        description="Upstash Redis REST API stand-in that forwards to a real Redis.",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--token", default=os.environ.get("UPSTASH_REDIS_REST_TOKEN", ""))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8079)
    parser.add_argument("--keepalive-seconds", type=float, default=KEEPALIVE_SECONDS)
    parser.add_argument(
        "--delay-ms", type=float, default=float(os.environ.get(ENV_DELAY) or 0),
        help=f"added to every request, like the distance to Upstash (default ${ENV_DELAY} or 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("set --redis-url or REDIS_URL")
    if not args.token:
        parser.error("set --token or UPSTASH_REDIS_REST_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # werkzeug's access log prints request paths, and the path form carries command arguments.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(
        args.redis_url, args.token, keepalive_seconds=args.keepalive_seconds,
        delay_ms=args.delay_ms,
    )  # fmt: skip
    server = make_server(args.host, args.port, app, threaded=True)
    log.info("Upstash REST stand-in on http://%s:%d", args.host, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        server.server_close()
        close(app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
