"""What the offline LLM reads and writes: fault markers, the chat-completions request, and the
answer (a deterministic instance of the requested JSON schema, or prose), cut into tokens.

The server around it is `scripts.fakes.offline_llm`."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REFUSAL = "I'm sorry, but I can't help with that request."
MARKER = re.compile(r"\[\[llm:([a-z_]+)(?:=([^\]]*))?\]\]")
_ANY_MARKER = re.compile(r"\[\[.*?\]\]", re.S)
_DATA_URL = re.compile(r"\Adata:image/(?:png|jpeg|webp|gif);base64,(.*)\Z", re.S)
# An image part the offline LLM cannot use reads as this marker (OpenAI answers 400).
UNREADABLE = "[[llm:unreadable]]"
_SCHEMA_TAGS = re.compile(r"<json_schema>(.*?)</json_schema>", re.S)
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
# About four characters per token, like a BPE tokenizer on English; CJK gets 1-2 characters.
_TOKEN = re.compile(rf"[{_CJK}]{{1,2}}| ?[^\W_{_CJK}]{{1,4}}|\s+|.", re.S)
_WORD = re.compile(r"[^\W\d_][\w'-]*")
_EN_WORDS = "led team delivered project improved system design customer data growth results".split()
_ZH_WORDS = "负责 项目 团队 经验 提升 设计 开发 优化 系统 用户 数据 成果 沟通 管理".split()
# Recursive schemas (a tree of sections) stop growing past this depth: nullable and empty wins.
_MAX_DEPTH = 6
# A boolean answers true (an audit lets the match run), except these under [[llm:audit_stop]]:
# the audit of a screenshot that is no job posting, which ends match_from_image before job_match.
_AUDIT_STOP_FALSE = frozenset({"proceed", "job_description_is_job"})


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
    unreadable: bool = False
    audit_stop: bool = False


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
        elif name in (
            "hang",
            "invalid_json",
            "invalid_json_once",
            "refuse",
            "unreadable",
            "audit_stop",
        ):
            found[name] = True
    return Faults(**found)


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


def _image_markers(part: dict[str, Any]) -> str:
    """The markers an `image_url` part's image carries in its bytes (a PNG tEXt chunk, a JPEG
    comment...). An image that is not a base64 `data:` URL of an image reads as unreadable,
    as OpenAI refuses it (remote URLs are not fetched offline)."""
    image_url = part.get("image_url")
    url = image_url.get("url", "") if isinstance(image_url, dict) else ""
    matched = _DATA_URL.match(url) if isinstance(url, str) else None
    if matched is None:
        return UNREADABLE
    try:
        data = base64.b64decode(matched.group(1), validate=True)
    except ValueError:
        return UNREADABLE
    return (
        " ".join(m.group(0) for m in MARKER.finditer(data.decode("latin-1")))
        if data
        else UNREADABLE
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict)]
        texts = [
            _image_markers(p) if p.get("type") == "image_url" else str(p.get("text", ""))
            for p in parts
        ]
        return "\n".join(t for t in texts if t)
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

    def __init__(self, seed: str, source: str, falsy: frozenset[str] = frozenset()) -> None:
        """`falsy`: the names of the boolean properties that answer false (the rest: true)."""
        self.rng = random.Random(int(seed[:16], 16))
        self.falsy = falsy
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
            "boolean": lambda _s, n, _d: n not in self.falsy,
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
    writer = Writer(req.key, req.last_user, _AUDIT_STOP_FALSE if faults.audit_stop else frozenset())
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
