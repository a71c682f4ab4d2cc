"""Offline LLM: an OpenAI-compatible chat-completions server on loopback for dev and tests.

The real `openai` client talks to it with `base_url=http://127.0.0.1:PORT/v1`. Output is
deterministic per request (seeded from the messages) and, when a JSON schema is requested, is a
valid instance of that schema. Markers in the message text script faults (SPEC "Offline LLM"):
`[[llm:fail=CODE]]`, `[[llm:fail_once=CODE]]`, `[[llm:hang]]`, `[[llm:slow=MS]]`,
`[[llm:invalid_json]]`, `[[llm:invalid_json_once]]` (the first answer to a user message only)
and `[[llm:refuse]]`; for benchmarks, `[[llm:tokens=N]]` lengthens a schema answer to at least
N tokens with an extra `notes` field, which result models ignore. Booleans answer true, except
`proceed` and `job_description_is_job` under `[[llm:audit_stop]]` (an audit that ends a
`match_from_image` pipeline before its match).

Image parts (`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`) are
accepted; the markers are read from the image's bytes too (a PNG's tEXt chunk carries them), and
`[[llm:unreadable]]` there, or an image part that is not a base64 `data:` URL of an image, gets
the 400 `invalid_image` OpenAI answers for an image it cannot use.

`GET /_offline/streams` lists the latest streamed answers with when each started and ended and
how (`streaming` while it lasts, then `completed`, or `client_closed` the moment the client
closed its connection mid-stream),
so a test can see that a cancel closed the request to the provider.

Message content is never logged: it carries resume text.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from scripts.fakes.offline_llm_content import (
    REFUSAL,
    BadRequest,
    ChatRequest,
    parse_faults,
    parse_request,
    render,
    tokenize,
)

log = logging.getLogger("offline_llm")

EXTENSION = "offline_llm"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


@dataclass
class _State:
    """Per-app memory, so that several apps in one process do not share it."""

    tokens_per_second: float
    hang_seconds: float
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed_once: set[str] = field(default_factory=set)
    hanging: int = 0
    # The latest streamed answers and how each ended (GET /_offline/streams).
    streams: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=200)
    )

    def record_stream(self, model: str) -> dict[str, Any]:
        """A new stream's record: `streaming` until it ends (`completed`, `client_closed`)."""
        record = {"model": model, "started_at": time.time(), "outcome": "streaming"}
        with self.lock:
            self.streams.append(record)
        return record

    def first_call(self, key: str) -> bool:
        with self.lock:
            if key in self.failed_once:
                return False
            self.failed_once.add(key)
            return True


def _error(status: int, message: str, code: str) -> Response:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _hang(state: _State, sock: socket.socket | None) -> None:
    """Send nothing until `hang_seconds` pass, the client goes away or the server stops."""
    deadline = time.monotonic() + state.hang_seconds
    while not state.stop.is_set() and (left := deadline - time.monotonic()) > 0:
        if sock is None:
            state.stop.wait(min(left, 0.2))
            continue
        readable, _, _ = select.select([sock], [], [], min(left, 0.2))
        if readable and _peer_closed(sock):
            break
        if readable:
            # Pipelined bytes would keep select() ready; wait instead of spinning.
            state.stop.wait(min(left, 0.2))
    if sock is not None:
        # Closing our side makes werkzeug's write fail as a dropped connection: no byte is sent.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("socket already closed after hang")


# Fixed width (until the year 2286), so every frame's length is known before it is sent.
_STAMP_WIDTH = 17


@dataclass(frozen=True)
class _Frame:
    """One SSE event, split around its `cs_emitted_at` value; `token` says it follows a sleep."""

    head: bytes
    tail: bytes
    token: bool

    def render(self) -> bytes:
        return self.head + f"{time.time():{_STAMP_WIDTH}.6f}".encode() + self.tail


def _frames(req: ChatRequest, pieces: list[str], refuse: bool) -> list[_Frame]:
    base = {
        "id": f"chatcmpl-{req.key[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "fp_offline",
    }

    def frame(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> _Frame:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = json.dumps({**base, "choices": choices, **extra}, ensure_ascii=False)
        head = f'data: {body[:-1]}, "cs_emitted_at": '
        return _Frame(
            head.encode(), b"}\n\n", token=delta is not None and delta.get("role") is None
        )

    first = {"role": "assistant", "content": None, "refusal": ""} if refuse else None
    out = [frame(first or {"role": "assistant", "content": ""})]
    for i, piece in enumerate(pieces, 1):
        delta = {"content": None, "refusal": piece} if refuse else {"content": piece}
        out.append(frame(delta, "stop" if i == len(pieces) else None))
    if not pieces:
        out.append(frame({"refusal" if refuse else "content": ""}, "stop"))
    if req.include_usage:
        out.append(frame(None, usage=_usage(req, len(pieces))))
    return out


_DONE = b"data: [DONE]\n\n"


def _client_left(sock: socket.socket | None, seconds: float) -> bool:
    """Wait `seconds`; True as soon as the client closes its connection meanwhile."""
    if sock is None:
        time.sleep(seconds)
        return False
    readable, _, _ = select.select([sock], [], [], seconds)
    if readable and _peer_closed(sock):
        return True
    if readable:  # pipelined bytes keep select() ready: sleep the rest instead of spinning
        time.sleep(seconds)
    return False


def _stream(
    req: ChatRequest,
    frames: list[_Frame],
    interval: float,
    state: _State,
    sock: socket.socket | None,
) -> Iterator[bytes]:
    sent, total = 0, sum(f.token for f in frames)
    record = state.record_stream(req.model)
    outcome = "client_closed"
    try:
        start = time.monotonic()
        for frame in frames:
            if frame.token:
                sent += 1
                # Sleep to an absolute schedule so per-chunk overhead does not slow the rate.
                delay = start + sent * interval - time.monotonic()
                if delay > 0 and _client_left(sock, delay):
                    return
            yield frame.render()
        yield _DONE
        outcome = "completed"
    finally:
        # A write to a closed connection ends the generator here too (werkzeug closes it).
        with state.lock:
            record.update(tokens=sent, ended_at=time.time(), outcome=outcome)
        _log_line(req.model, 200, sent, "stream" if sent == total else "stream-dropped")


def _usage(req: ChatRequest, completion_tokens: int) -> dict[str, int]:
    total = req.prompt_tokens + completion_tokens
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total,
    }


def _completion(req: ChatRequest, pieces: list[str], refuse: bool, interval: float) -> Response:
    # A real model takes as long to answer without streaming; keep the same pace.
    time.sleep(len(pieces) * interval)
    text = "".join(pieces)
    message = {
        "role": "assistant",
        "content": None if refuse else text,
        "refusal": text if refuse else None,
    }
    body = {
        "id": f"chatcmpl-{req.key[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": "fp_offline",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(req, len(pieces)),
    }
    _log_line(req.model, 200, len(pieces), "complete")
    return Response(json.dumps(body, ensure_ascii=False), mimetype="application/json")


def _log_line(model: str, status: int | str, tokens: int, outcome: str) -> None:
    log.info(
        "POST /v1/chat/completions model=%s status=%s tokens=%d %s", model, status, tokens, outcome
    )


def _chat(state: _State) -> Response:
    try:
        req = parse_request(request.get_data())
    except BadRequest as exc:
        _log_line("-", 400, 0, "bad-request")
        return _error(400, str(exc), "invalid_request")
    faults = parse_faults(req.text)
    status = faults.fail or (
        faults.fail_once if faults.fail_once and state.first_call(req.key) else None
    )
    if status:
        _log_line(req.model, status, 0, "scripted-failure")
        return _error(status, f"Offline LLM scripted failure {status}.", "scripted_failure")
    if faults.unreadable:  # what OpenAI answers for an image it cannot use
        _log_line(req.model, 400, 0, "unreadable-image")
        return _error(
            400,
            "The image data you provided does not represent a valid image.",
            "invalid_image",
        )
    if faults.hang:
        _log_line(req.model, "hang", 0, "no-response")
        with state.lock:
            state.hanging += 1
        try:
            _hang(state, request.environ.get("werkzeug.socket"))
        finally:
            with state.lock:
                state.hanging -= 1
        return Response(status=504)
    interval = faults.slow_ms / 1000 if faults.slow_ms is not None else 1 / state.tokens_per_second
    if faults.invalid_json_once and state.first_call(_user_key(req)):
        # Keyed by the user message alone: a repair that only adds to the system prompt, or a
        # plain retry, gets a valid answer.
        faults = dataclasses.replace(faults, invalid_json=True)
    pieces = tokenize(REFUSAL if faults.refuse else render(req, faults))
    if req.stream:
        frames = _frames(req, pieces, faults.refuse)
        size = sum(len(f.head) + _STAMP_WIDTH + len(f.tail) for f in frames) + len(_DONE)
        # A known length spares werkzeug's chunked framing: one socket write per token, not four.
        # With 200 streams at 40 tokens/s that halves the CPU of this GIL-bound process.
        headers = {"Cache-Control": "no-cache", "Content-Length": str(size)}
        stream = _stream(req, frames, interval, state, request.environ.get("werkzeug.socket"))
        return Response(stream, mimetype="text/event-stream", headers=headers)
    return _completion(req, pieces, faults.refuse, interval)


def _user_key(req: ChatRequest) -> str:
    return "user:" + hashlib.sha256(req.last_user.encode()).hexdigest()


def create_app(tokens_per_second: float = 40.0, hang_seconds: float = 600.0) -> Flask:
    """The offline LLM as a Flask app; its state lives in `app.extensions["offline_llm"]`.

    Raises `ValueError` when `tokens_per_second` or `hang_seconds` is not positive.
    """
    if tokens_per_second <= 0 or hang_seconds <= 0:
        raise ValueError("tokens_per_second and hang_seconds must be positive")
    app = Flask(__name__)
    state = _State(tokens_per_second=tokens_per_second, hang_seconds=hang_seconds)
    app.extensions[EXTENSION] = state

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True}

    @app.get("/v1/models")
    def models() -> Any:
        entry = {"id": "offline", "object": "model", "created": 0, "owned_by": "careershaper"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        return _chat(state)

    @app.get("/_offline/streams")
    def streams() -> Any:
        with state.lock:
            return {"streams": [dict(record) for record in state.streams]}

    @app.after_request
    def log_other(response: Response) -> Response:
        if request.endpoint != "chat":
            log.info("%s %s status=%d", request.method, request.path, response.status_code)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name, exc.name.lower())

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the offline LLM until interrupted."""
    # argparse applies `type` to a string default, so a bad value gets a usage error.
    env_rate = os.environ.get("OFFLINE_LLM_TOKENS_PER_SECOND", "40")
    parser = argparse.ArgumentParser(
        prog="python -m scripts.fakes.offline_llm", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8400)
    parser.add_argument("--tokens-per-second", type=float, default=env_rate)
    parser.add_argument("--hang-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One line per request comes from this module; werkzeug's access log would double it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(args.tokens_per_second, args.hang_seconds)
    server = make_server(args.host, args.port, app, threaded=True)
    # werkzeug listens with a backlog of 128; a burst of 200 connects would overflow it and
    # stall clients for a SYN retransmit (1 s). Listening again raises the backlog in place.
    server.socket.listen(1024)
    log.info(
        "offline LLM on http://%s:%d/v1 at %s tokens/s",
        args.host,
        server.server_port,
        args.tokens_per_second,
    )
    # SIGTERM stops it like Ctrl-C. A shell's background job starts with SIGINT ignored, so
    # process managers and tests should send SIGTERM.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()  # werkzeug returns from it on KeyboardInterrupt
    finally:
        app.extensions[EXTENSION].stop.set()
        server.server_close()
        log.info("stopped")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
