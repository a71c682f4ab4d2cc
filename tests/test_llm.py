"""`lib.llm.LLM.stream_json` against a real local HTTP server speaking the chat-completions
streaming protocol, scripted to misbehave the ways providers do mid-answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response
from helpers.net import serve_wsgi

from lib.config import Settings
from lib.errors import PermanentError, RetryableError
from lib.llm import LLM, Usage


def chunk(content: str | None = None, **extra: Any) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    body = {"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra}
    return f"data: {json.dumps(body)}\n\n".encode()


SCRIPTS: dict[str, list[bytes | float]] = {
    "ok": [
        chunk('{"a": '),
        chunk('"b"}', cs_emitted_at=1700000000.25),
        chunk(usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
        b"data: [DONE]\n\n",
    ],
    "refusal": [
        b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"refusal": "no"}}]}\n\n',
        b"data: [DONE]\n\n",
    ],
    "error_event": [chunk('{"a": '), b'data: {"error": {"message": "overloaded"}}\n\n'],
    "silent": [chunk('{"a": '), 5.0, chunk('"b"}')],
    "broken": [chunk('{"a": '), RuntimeError],  # type: ignore[list-item]
}


def provider() -> Flask:
    app = Flask("provider")

    @app.post("/v1/chat/completions")
    def completions() -> Response:
        from flask import request

        script = SCRIPTS[request.get_json()["messages"][-1]["content"]]

        def stream() -> Iterator[bytes]:
            for step in script:
                if isinstance(step, float):
                    time.sleep(step)
                elif isinstance(step, bytes):
                    yield step
                else:  # the server dies mid-response: the chunked body is never finished
                    raise RuntimeError("provider crashed")

        return Response(stream(), mimetype="text/event-stream")

    return app


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    with serve_wsgi(provider()) as url:
        yield LLM(
            Settings(  # type: ignore[call-arg]
                openai_base_url=f"{url}/v1",
                openai_api_key="test",
                llm_read_timeout_seconds=1.0,
            )
        )


def ask(llm: LLM, script: str, seen: list[tuple[str, float | None]]) -> Any:
    usage: list[Usage] = []
    completion = llm.stream_json(
        "openai:model",
        system="s",
        user=script,
        schema_name="x",
        schema={"type": "object"},
        on_text=lambda text, at: seen.append((text, at)),
        on_usage=lambda u, _first: usage.append(u),
    )
    return completion, usage


def test_a_stream_is_read_piece_by_piece_with_its_stamps_and_usage(llm: LLM) -> None:
    seen: list[tuple[str, float | None]] = []
    completion, usage = ask(llm, "ok", seen)
    assert seen == [('{"a": ', None), ('"b"}', 1700000000.25)]
    assert completion.text == '{"a": "b"}'
    assert completion.usage == Usage(7, 2) and usage == [Usage(7, 2)]
    assert completion.first_token_s is not None


def test_a_refusal_is_a_permanent_model_refused(llm: LLM) -> None:
    with pytest.raises(PermanentError) as caught:
        ask(llm, "refusal", [])
    assert caught.value.code == "model_refused"


def test_an_error_event_mid_stream_is_retryable_and_keeps_what_was_streamed(llm: LLM) -> None:
    seen: list[tuple[str, float | None]] = []
    with pytest.raises(RetryableError) as caught:
        ask(llm, "error_event", seen)
    assert caught.value.code == "llm_unavailable"
    assert seen == [('{"a": ', None)]


def test_a_provider_silent_mid_stream_is_a_retryable_timeout(llm: LLM) -> None:
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        ask(llm, "silent", [])
    assert caught.value.code == "llm_timeout"
    assert time.monotonic() - started < 4  # LLM_READ_TIMEOUT_SECONDS=1, not the 5 s silence


def test_a_connection_broken_mid_stream_is_retryable(llm: LLM) -> None:
    usage: list[Usage] = []
    with pytest.raises(RetryableError) as caught:
        llm.stream_json(
            "openai:model",
            system="s",
            user="broken",
            schema_name="x",
            schema={"type": "object"},
            on_text=lambda *_: None,
            on_usage=lambda u, _first: usage.append(u),
        )
    assert caught.value.code == "llm_unavailable"
    assert usage == [Usage(0, 1)]  # one chunk streamed before the break, counted as output
