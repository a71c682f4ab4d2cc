"""Offline LLM: an OpenAI-compatible chat-completions server on loopback for dev and tests.

The real `openai` client talks to it with `base_url=http://127.0.0.1:PORT/v1`. Output is
deterministic per request (seeded from the messages) and, when a JSON schema is requested, is a
valid instance of that schema. Markers in the message text script faults (SPEC "Offline LLM"):
`[[llm:fail=CODE]]`, `[[llm:fail_once=CODE]]`, `[[llm:hang]]`, `[[llm:slow=MS]]`,
`[[llm:invalid_json]]`, `[[llm:invalid_json_once]]` (the first answer to a user message only)
and `[[llm:refuse]]`; for benchmarks, `[[llm:tokens=N]]` lengthens a schema answer to at least
N tokens with an extra `notes` field, which result models ignore.

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
import math
import os
import random
import re
import select
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

log = logging.getLogger("offline_llm")

EXTENSION = "offline_llm"
REFUSAL = "I'm sorry, but I can't help with that request."
MARKER = re.compile(r"\[\[llm:([a-z_]+)(?:=([^\]]*))?\]\]")
_ANY_MARKER = re.compile(r"\[\[.*?\]\]", re.S)
_SCHEMA_TAGS = re.compile(r"<json_schema>(.*?)</json_schema>", re.S)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
# About four characters per token, like a BPE tokenizer on English; CJK gets 1-2 characters.
_TOKEN = re.compile(rf"[{_CJK}]{{1,2}}| ?[^\W_{_CJK}]{{1,4}}|\s+|.", re.S)
_WORD = re.compile(r"[^\W\d_][\w'-]*")
_EN_WORDS = "led team delivered project improved system design customer data growth results".split()
_ZH_WORDS = "负责 项目 团队 经验 提升 设计 开发 优化 系统 用户 数据 成果 沟通 管理".split()
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
# Recursive schemas (a tree of sections) stop growing past this depth: nullable and empty wins.
_MAX_DEPTH = 6


@dataclass(frozen=True)
class Faults:
    """The fault markers found in a request's messages."""

    fail: int | None = None
    fail_once: int | None = None
    hang: bool = False
    slow_ms: float | None = None
    tokens: int | None = None
    invalid_json: bool = False
    invalid_json_once: bool = False
    refuse: bool = False


def parse_faults(text: str) -> Faults:
    """Read `[[llm:...]]` markers from `text`; unknown or malformed markers are ignored."""
    found: dict[str, Any] = {}
    for name, arg in MARKER.findall(text):
        if name in ("fail", "fail_once") and re.fullmatch(r"[45]\d\d", arg):
            found[name] = int(arg)
        elif name == "slow" and re.fullmatch(r"\d+(\.\d+)?", arg):
            found["slow_ms"] = float(arg)
        elif name == "tokens" and re.fullmatch(r"\d{1,6}", arg):
            found["tokens"] = int(arg)
        elif name in ("hang", "invalid_json", "invalid_json_once", "refuse"):
            found[name] = True
    return Faults(**found)


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


class BadRequest(ValueError):
    """The request body is not a chat-completions request."""


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions request this server acts on."""

    model: str
    stream: bool
    include_usage: bool
    wants_json: bool
    schema: dict[str, Any] | None
    key: str
    text: str
    last_user: str
    prompt_tokens: int


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def parse_request(body: bytes) -> ChatRequest:
    """Parse a chat-completions body; raises `BadRequest` when it is not one."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array.")
    if not all(isinstance(m, dict) for m in messages):
        raise BadRequest("Each entry of 'messages' must be an object.")
    texts = [_content_text(m.get("content")) for m in messages]
    system = "\n".join(t for m, t in zip(messages, texts, strict=True) if m.get("role") == "system")
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    fmt = data.get("response_format") if isinstance(data.get("response_format"), dict) else {}
    schema: dict[str, Any] | None = None
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
    elif tagged := _SCHEMA_TAGS.search(system):
        try:
            schema = json.loads(tagged.group(1))
        except ValueError:
            schema = None
    options = data.get("stream_options") or {}
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return ChatRequest(
        model=str(data.get("model") or "offline"),
        stream=bool(data.get("stream")),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        wants_json=schema is not None or fmt.get("type") == "json_object",
        schema=schema if isinstance(schema, dict) else None,
        key=hashlib.sha256(canonical.encode()).hexdigest(),
        text="\n".join(texts),
        last_user=users[-1] if users else texts[-1],
        prompt_tokens=max(1, round(sum(len(t) for t in texts) / 4)),
    )


class Writer:
    """Deterministic text and JSON-schema instances built from the words of one message."""

    def __init__(self, seed: str, source: str) -> None:
        self.rng = random.Random(int(seed[:16], 16))
        self.root: dict[str, Any] = {}
        clean = _ANY_MARKER.sub(" ", source)
        runs = _CJK_RUN.findall(clean)
        self.chinese = bool(runs)
        if self.chinese:
            pieces = [run[i : i + 2] for run in runs for i in range(0, len(run), 2)]
            self.vocab = pieces + _ZH_WORDS
        else:
            self.vocab = [w for w in _WORD.findall(clean) if len(w) > 1] or _EN_WORDS

    def words(self, n: int) -> list[str]:
        return [self.rng.choice(self.vocab) for _ in range(n)]

    def sentence(self, n: int = 0) -> str:
        """One sentence of `n` words (6-10 when 0)."""
        words = self.words(n or self.rng.randint(6, 10))
        if self.chinese:
            return "".join(words) + "。"
        return " ".join(words).capitalize() + "."

    def paragraph(self, n_words: int) -> str:
        """Sentences until about `n_words` words."""
        out: list[str] = []
        count = 0
        while count < n_words:
            out.append(self.sentence())
            # A Chinese "word" here is a two-character piece.
            count += len(out[-1]) // 2 if self.chinese else len(out[-1].split())
        return ("" if self.chinese else " ").join(out)

    def title(self, n: int) -> str:
        words = self.words(n)
        return "".join(words) if self.chinese else " ".join(words).title()

    def markdown(self) -> str:
        """A markdown document of about 120 words: heading, paragraph, bullet list, paragraph."""
        title, sub = self.title(4), self.title(2)
        bullets = "\n".join(f"- {self.sentence(12)}" for _ in range(6))
        return f"# {title}\n\n{self.paragraph(20)}\n\n## {sub}\n\n{bullets}\n\n{self.paragraph(20)}"

    def instance(self, schema: dict[str, Any]) -> Any:
        """An instance of `schema` (JSON Schema as pydantic v2 writes it, `$defs` at the root)."""
        self.root = schema
        return self._value(schema, "", 0)

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while isinstance(schema.get("$ref"), str):
            target: Any = self.root
            for part in schema["$ref"].lstrip("#").strip("/").split("/"):
                if part:
                    target = target[part.replace("~1", "/").replace("~0", "~")]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def _value(self, schema: Any, name: str, depth: int) -> Any:
        schema = self._resolve(schema) if isinstance(schema, dict) else {}
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            return self._value(self._pick(options, depth), name, depth)
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged.update(self._resolve(part))
            return self._value(merged, name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            if "default" in schema:
                return schema["default"]
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        return self._makers()[kind](schema, name, depth)

    def _makers(self) -> dict[str, Callable[[dict[str, Any], str, int], Any]]:
        return {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": lambda s, _n, _d: self._number(s, integer=True),
            "number": lambda s, _n, _d: self._number(s, integer=False),
            "boolean": lambda _s, _n, _d: self.rng.random() < 0.5,
            "null": lambda _s, _n, _d: None,
        }

    def _pick(self, options: list[Any], depth: int) -> Any:
        def is_null(option: Any) -> bool:
            return isinstance(option, dict) and option.get("type") == "null"

        preferred = [o for o in options if is_null(o) == (depth > _MAX_DEPTH)]
        return (preferred or options)[0]

    def _object(self, schema: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        out = {key: self._value(sub, key, depth + 1) for key, sub in props.items()}
        extra = schema.get("additionalProperties")
        if not props and isinstance(extra, dict) and depth <= _MAX_DEPTH:
            for key in dict.fromkeys(self.words(2)):
                out[key] = self._value(extra, name, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        low = schema.get("minItems", 0)
        count = low if depth > _MAX_DEPTH else max(low, min(3, schema.get("maxItems", 3)))
        prefix = schema.get("prefixItems") or []
        items = [self._value(sub, name, depth + 1) for sub in prefix[:count]]
        if schema.get("items") is False:
            return items
        seen = {json.dumps(i, sort_keys=True) for i in items}
        for _ in range(10 * count):
            if len(items) >= count:
                break
            item = self._value(schema.get("items") or {}, name, depth + 1)
            key = json.dumps(item, sort_keys=True)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            items.append(item)
        return items

    def _string(self, schema: dict[str, Any], name: str, _depth: int) -> str:
        formatted = self._formatted(schema.get("format"))
        if formatted is not None:
            return formatted
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text = self.markdown() if "markdown" in name.lower() else self.sentence()
        while len(text) < low:
            text += ("" if self.chinese else " ") + self.sentence()
        if high is not None and len(text) > high:
            cut = text[:high]
            # Prefer ending on a whole word, as long as that still meets minLength.
            whole = cut.rsplit(" ", 1)[0] if " " in cut else cut
            text = whole if len(whole) >= low else cut
        return text

    def _formatted(self, fmt: Any) -> str | None:
        r = self.rng
        day = f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        clock = f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00"
        return (
            {
                "date-time": f"{day}T{clock}Z",
                "date": day,
                "time": clock,
                "duration": f"PT{r.randint(1, 90)}M",
                "email": f"user{r.randint(1, 999)}@example.com",
                "uri": f"https://example.com/{r.randint(1, 999)}",
                "uuid": str(uuid.UUID(int=r.getrandbits(128), version=4)),
                "ipv4": f"192.0.2.{r.randint(1, 254)}",
            }.get(fmt)
            if isinstance(fmt, str)
            else None
        )

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low, high = schema.get("minimum"), schema.get("maximum")
        if (above := schema.get("exclusiveMinimum")) is not None:
            above = math.floor(above) + 1 if integer else above
            low = above if low is None else max(low, above)
        if (below := schema.get("exclusiveMaximum")) is not None:
            below = math.ceil(below) - 1 if integer else below
            high = below if high is None else min(high, below)
        low = low if low is not None else (high - 100 if high is not None else 0)
        high = high if high is not None else low + 100
        if integer:
            unit = int(schema.get("multipleOf", 1))
            first, last = math.ceil(low / unit), math.floor(high / unit)
            return unit * (self.rng.randint(first, last) if first <= last else first)
        # A margin keeps the value strictly inside exclusive bounds.
        value = low + (high - low) * self.rng.uniform(0.1, 0.9)
        rounded = round(value, 2)
        return rounded if low < rounded < high else value


def render(req: ChatRequest, faults: Faults) -> str:
    """The assistant's text for `req`: a schema instance, a JSON object, or prose."""
    writer = Writer(req.key, req.last_user)
    if faults.invalid_json and req.wants_json:
        return (
            '{"result": "' + writer.sentence() + '" then the model rambles: ' + writer.paragraph(30)
        )
    if req.schema is not None:
        instance = writer.instance(req.schema)
        text = json.dumps(instance, ensure_ascii=False, indent=None)
        if faults.tokens and isinstance(instance, dict):
            text = _padded(instance, writer, faults.tokens) or text
        return text
    if req.wants_json:
        return json.dumps({"answer": writer.paragraph(60)}, ensure_ascii=False, indent=None)
    return writer.paragraph(60)


def _padded(instance: dict[str, Any], writer: Writer, tokens: int) -> str | None:
    """`instance` with a `notes` field long enough for at least `tokens` tokens in all (a
    result model ignores unknown fields), or None when it is that long already."""

    def size(notes: str) -> int:
        return len(tokenize(json.dumps({**instance, "notes": notes}, ensure_ascii=False)))

    if len(tokenize(json.dumps(instance, ensure_ascii=False))) >= tokens:
        return None
    words = writer.paragraph(tokens).split(" ")
    low, high = 1, len(words)
    while low < high:  # the fewest words that reach `tokens`
        mid = (low + high) // 2
        if size(" ".join(words[:mid])) >= tokens:
            high = mid
        else:
            low = mid + 1
    return json.dumps({**instance, "notes": " ".join(words[:low])}, ensure_ascii=False)


def tokenize(text: str) -> list[str]:
    """Split `text` into tokens of about four characters; joined, they give `text` back."""
    return _TOKEN.findall(text)


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
    parser = argparse.ArgumentParser(prog="python -m scripts.offline_llm", description=__doc__)
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
