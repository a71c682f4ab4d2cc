"""What the executor and the handlers need of a model client, without importing `openai`.

`lib.llm.LLM` is the real client (OpenAI-compatible APIs); it is worker-only, as `openai` is
heavy. `api/` reaches the handlers (their input models and prompts), so the types the handlers'
`Context` names live here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lib.errors import PermanentError
from lib.models import ErrorCode


@dataclass
class Usage:
    """Tokens in (prompt) and out (completion) of one model call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    """A model's whole answer, its usage and the time to its first token."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    first_token_s: float | None = None


class LLM(Protocol):
    """A model client that streams a JSON answer (see `lib.llm.LLM.stream_json`)."""

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
        """Stream the answer of `model_spec` ("provider:model") to `on_text`; return it whole.

        Raises RetryableError for transient provider failures, PermanentError otherwise."""
        ...


class LLMMeter(Protocol):
    """Where a model call's tokens and time to first token are counted (`lib.metrics.Metrics`)."""

    def llm_call(
        self,
        kind: str,
        tier: str,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        first_token_s: float | None,
    ) -> None:
        """One model call ended (also when it failed or was stopped early)."""
        ...


def parse_json(text: str) -> Any:
    """Parse a model's JSON answer, tolerating a ```json fence around it.

    Raises PermanentError(invalid_model_output) when it is not JSON.
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise PermanentError(
            "the model's output is not valid JSON", code=ErrorCode.INVALID_MODEL_OUTPUT
        ) from exc
