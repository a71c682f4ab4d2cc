"""LLM calls through OpenAI-compatible APIs (OpenAI, DeepSeek, GLM, the offline dev server).

Only the worker imports this module: `openai` is heavy and `api/` must not pay for it.
A model is named by a "provider:model" spec from config; the provider gives the base URL and key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import openai

from lib.config import JSON_SCHEMA_PROVIDERS, Settings
from lib.errors import AppError, PermanentError, RetryableError
from lib.llm_types import Completion, Usage, parse_json
from lib.models import ErrorCode

__all__ = ["LLM", "Completion", "Usage", "parse_json"]

# What the SDK's HTTP client raises when a stream goes silent or breaks after the response began
# (the SDK itself wraps only errors before it). openai 3.x runs on httpx2, earlier on httpx.
_TIMEOUTS: tuple[type[Exception], ...] = (httpx.TimeoutException,)
_BROKEN: tuple[type[Exception], ...] = (httpx.TransportError,)
try:
    import httpx2

    _TIMEOUTS += (httpx2.TimeoutException,)
    _BROKEN += (httpx2.TransportError,)
except ImportError:  # pragma: no cover - an SDK on plain httpx
    pass


class LLM:
    """A client per provider, created on first use; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, openai.OpenAI] = {}
        self._lock = threading.Lock()

    def _client(self, provider: str) -> openai.OpenAI:
        with self._lock:
            client = self._clients.get(provider)
            if client is None:
                base_url, api_key = self.settings.provider(provider)
                client = openai.OpenAI(
                    base_url=base_url,
                    api_key=api_key or "not-needed",
                    max_retries=0,  # the broker owns retries; a retry here would double-stream
                    timeout=openai.Timeout(
                        self.settings.llm_read_timeout_seconds,
                        connect=self.settings.llm_connect_timeout_seconds,
                    ),
                )
                self._clients[provider] = client
            return client

    def stream_json(
        self,
        model_spec: str,
        *,
        system: str,
        user: str,
        schema_name: str,
        schema: dict[str, Any],
        on_text: Callable[[str, float | None], None],
        on_usage: Callable[[Usage, float | None], None] | None = None,
        images: Sequence[str] = (),
    ) -> Completion:
        """Stream a JSON answer, calling `on_text` with each piece of output and the time the
        provider stamped on it (`cs_emitted_at`, sent by the offline LLM only; else None).

        `on_usage(usage, first_token_at)` is called once the stream ends, also when it ends
        early or fails: the tokens in and out as the provider reported them (it does at the end
        of a stream asked for with `include_usage`), else 0 in and the number of streamed
        chunks out; and the `time.monotonic()` of the first output, or None.

        `images` (`data:` URLs) go with the user message as OpenAI `image_url` parts.

        Raises RetryableError (llm_unavailable, llm_timeout) for transient provider failures
        and PermanentError (model_refused, unreadable_image, or a 4xx the provider will repeat).
        """
        provider, _, model = model_spec.partition(":")
        if provider in JSON_SCHEMA_PROVIDERS:
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": False},
            }
        else:
            response_format = {"type": "json_object"}
        completions = self._client(provider).chat.completions
        try:
            # The raw stream, read as JSON lines: the SDK's per-chunk pydantic models cost about
            # 2.5x the CPU per token, the worker's ceiling (docs/performance.md). The SDK still
            # makes the request: auth, retries, timeouts and status errors are its own.
            with completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": _user_content(user, images)},
                ],
                stream=True,
                stream_options={"include_usage": True},
                response_format=response_format,
                temperature=0.3,
            ) as response:  # closes the HTTP response even when on_text stops us early
                metered = _Metered(_chunks(response))
                try:
                    completion = _consume(metered, model_spec, on_text)
                finally:
                    if on_usage is not None:
                        on_usage(metered.usage(), metered.first_token_at)
        except openai.APIError as exc:
            raise _classify(exc) from exc
        except _TIMEOUTS as exc:  # silent mid-stream
            raise RetryableError(
                "the model stopped answering", code=ErrorCode.LLM_TIMEOUT, retry_after=5
            ) from exc
        except _BROKEN as exc:  # the connection broke mid-stream
            raise RetryableError(
                "the connection to the model broke", code=ErrorCode.LLM_UNAVAILABLE, retry_after=5
            ) from exc
        return completion


def _user_content(user: str, images: Sequence[str]) -> str | list[dict[str, Any]]:
    if not images:
        return user
    parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return parts


# What OpenAI-compatible APIs answer (400) for an image they cannot read.
_IMAGE_ERRORS = frozenset({"invalid_image", "invalid_image_format", "image_parse_error"})


def _chunks(response: Any) -> Iterator[dict[str, Any]]:
    """The chunks of a streamed chat completion (`data:` lines of Server-Sent Events) as plain
    dicts, up to `[DONE]`. An `error` event mid-stream is the provider failing: retryable."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        if chunk.get("error"):
            raise RetryableError(
                "the model provider failed mid-answer",
                code=ErrorCode.LLM_UNAVAILABLE,
                retry_after=5,
            )
        yield chunk


def _usage(chunk: dict[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if not usage:
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _content(choice: dict[str, Any]) -> str:
    return str((choice.get("delta") or {}).get("content") or "")


def _consume(
    stream: Any, model_spec: str, on_text: Callable[[str, float | None], None]
) -> Completion:
    """Read a chat-completions stream; raise PermanentError(model_refused) on a refusal."""
    started = time.monotonic()
    completion = Completion("", model_spec)
    pieces: list[str] = []
    refused = False
    for chunk in stream:
        usage = _usage(chunk)
        if usage:
            completion.usage = usage
        for choice in chunk.get("choices") or ():
            refused = refused or bool((choice.get("delta") or {}).get("refusal"))
            text = _content(choice)
            if text:
                if completion.first_token_s is None:
                    completion.first_token_s = time.monotonic() - started
                pieces.append(text)
                on_text(text, chunk.get("cs_emitted_at"))
    if refused:
        raise PermanentError("the model declined to answer", code=ErrorCode.MODEL_REFUSED)
    completion.text = "".join(pieces)
    return completion


class _Metered:
    """A chat-completions stream that keeps the provider's usage and counts output chunks."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.reported: Usage | None = None
        self.chunks = 0
        self.first_token_at: float | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for chunk in self.stream:
            self.reported = _usage(chunk) or self.reported
            if any(_content(choice) for choice in chunk.get("choices") or ()):
                self.chunks += 1
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
            yield chunk

    def usage(self) -> Usage:
        return self.reported or Usage(0, self.chunks)


def _classify(exc: openai.APIError) -> AppError:
    """Map a provider error to retryable (timeouts, 429, 5xx) or permanent (other 4xx)."""
    if isinstance(exc, openai.APITimeoutError):
        return RetryableError(
            "the model did not answer in time", code=ErrorCode.LLM_TIMEOUT, retry_after=5
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429 or status >= 500:
            return RetryableError(
                f"the model provider answered {status}",
                code=ErrorCode.LLM_UNAVAILABLE,
                retry_after=_retry_after(exc.response.headers.get("retry-after")),
            )
        if exc.code in _IMAGE_ERRORS:
            return PermanentError(
                "the model could not read the image", code=ErrorCode.UNREADABLE_IMAGE
            )
        return PermanentError(
            f"the model provider refused the request ({status})", code=ErrorCode.LLM_UNAVAILABLE
        )
    return RetryableError(
        "the model provider is unreachable", code=ErrorCode.LLM_UNAVAILABLE, retry_after=5
    )


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 5.0
    except ValueError:
        return 5.0
