"""The offline LLM's test harness: a running app (`Llm`), what a stream delivered, and the schemas
the tests ask for. The fixtures that start it (`serve`, `llm`) are in fixtures/fakes.py.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import openai
from flask import Flask
from pydantic import BaseModel, Field, HttpUrl

from scripts.fakes.offline_llm import EXTENSION

# Not helpers.stack.RESUME: words without punctuation, so a test can check that every word of an
# answer comes from the message (the offline LLM draws its vocabulary from it).
RESUME = "Senior Python engineer who led the payments migration and mentored backend developers"
CJK_RESUME = "我是一名后端工程师，负责支付系统的设计与优化，带领团队完成迁移。"


class Seniority(StrEnum):
    JUNIOR = "junior"
    SENIOR = "senior"
    LEAD = "lead"


class Bullet(BaseModel):
    text: str = Field(min_length=3, max_length=60)
    impact: int = Field(ge=0, le=100)


class Section(BaseModel):
    title: str
    bullets: list[Bullet] = Field(min_length=1, max_length=4)


class Review(BaseModel):
    score: int = Field(ge=0, le=100)
    seniority: Seniority
    headline: str | None = None
    sections: list[Section]
    summary_markdown: str
    confidence: float = Field(gt=0, lt=1)


class Tiny(BaseModel):
    n: int = Field(ge=10, le=99)


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


class Constraints(BaseModel):
    ratio: float = Field(gt=0.5, lt=0.6)
    small: int = Field(gt=-3, lt=-1)
    step: int = Field(multiple_of=7, ge=1, le=30)
    long_text: str = Field(min_length=200)
    exact: str = Field(min_length=3, max_length=3)
    when: dt.datetime
    url: HttpUrl
    ident: uuid.UUID
    counts: dict[str, int]
    pair: tuple[int, str]
    kind: Literal["a", "b"]
    tags: set[str] = Field(min_length=2)
    few: list[int] = Field(min_length=5, max_length=8)
    tree: Tree
    anything: object = 3


class Note(BaseModel):
    score: int = Field(ge=0, le=1000)
    note: str = Field(max_length=40)


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema}}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@dataclass
class Streamed:
    """What one streamed completion delivered, chunk by chunk."""

    chunks: list[Any] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    @property
    def choice_chunks(self) -> list[Any]:
        return [c for c in self.chunks if c.choices]

    @property
    def content_chunks(self) -> list[Any]:
        return [c for c in self.choice_chunks if c.choices[0].delta.content]

    @property
    def content(self) -> str:
        return "".join(c.choices[0].delta.content for c in self.content_chunks)

    def emitted(self, chunks: list[Any]) -> list[float]:
        return [c.model_extra["cs_emitted_at"] for c in chunks]


@dataclass
class Llm:
    """A running offline LLM: its app (None when it runs in another process) and base URL."""

    app: Flask | None
    url: str

    @property
    def state(self) -> Any:
        assert self.app is not None
        return self.app.extensions[EXTENSION]

    def client(self, timeout: float = 10.0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=timeout)

    def stream(self, client: openai.OpenAI | None = None, **kwargs: Any) -> Streamed:
        out = Streamed()
        kwargs.setdefault("model", "offline")
        with (client or self.client()).chat.completions.create(stream=True, **kwargs) as chunks:
            for chunk in chunks:
                out.arrivals.append(time.monotonic())
                out.chunks.append(chunk)
        return out


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []
