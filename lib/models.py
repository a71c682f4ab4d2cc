"""The single source of truth for kinds, inputs, statuses, events and error codes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_RESUME_CHARS = 20_000
MAX_JOB_DESCRIPTION_CHARS = 10_000
MAX_IDEMPOTENCY_KEY_CHARS = 128
# An earlier job_match result passed back as `match` (resume_customize, interview_prep): each
# field is bounded, and so is the whole match as the prompt renders it (JSON).
MAX_MATCH_LIST_ITEMS = 30
MAX_MATCH_ITEM_CHARS = 500
MAX_MATCH_SUMMARY_CHARS = 2_000
MAX_MATCH_PROMPT_CHARS = 6_000
# Each kind's bound on its rendered user prompt (Handler.max_prompt_chars), so a coin buys a
# bounded prompt. Without `match`: both texts at their limits, plus the framing. With it: less
# than every field at its limit, so long texts leave room for a shorter match only.
MAX_PROMPT_CHARS = MAX_RESUME_CHARS + MAX_JOB_DESCRIPTION_CHARS + 500
MAX_PROMPT_WITH_MATCH_CHARS = MAX_PROMPT_CHARS + MAX_MATCH_PROMPT_CHARS // 2
# The kinds that read an image (lib/images.py): they run on the tier's vision model.
VISION_KINDS = frozenset({"ocr_extract", "job_vision_summary"})


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Tier(StrEnum):
    FREE = "free"
    PAID = "paid"


class EventType(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    DELTA = "delta"
    RESULT = "result"
    ERROR = "error"
    STEP = "step"
    QUEUE = "queue"


class StreamStatus(StrEnum):
    """Values of a `status` event: the job statuses plus `retrying`."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ErrorCode(StrEnum):
    INVALID_INPUT = "invalid_input"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    QUOTA_EXHAUSTED = "quota_exhausted"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    USER_CONCURRENCY = "user_concurrency"
    BACKPRESSURE = "backpressure"
    STREAM_LIMIT = "stream_limit"
    UNAVAILABLE = "unavailable"
    ALREADY_FINISHED = "already_finished"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL = "internal"
    # Job failures (the job's `error.code`).
    INVALID_MODEL_OUTPUT = "invalid_model_output"
    MODEL_REFUSED = "model_refused"
    LLM_UNAVAILABLE = "llm_unavailable"
    LLM_TIMEOUT = "llm_timeout"
    RETRIES_EXHAUSTED = "retries_exhausted"
    WORKER_SHUTTING_DOWN = "worker_shutting_down"
    CANCELLED = "cancelled"
    UNREADABLE_IMAGE = "unreadable_image"


class JobInput(BaseModel):
    """The input shared by every kind; handlers may extend it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    resume_text: str = Field(min_length=1, max_length=MAX_RESUME_CHARS)
    job_description: str = Field(min_length=1, max_length=MAX_JOB_DESCRIPTION_CHARS)


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """The Job object of the HTTP API."""

    id: str
    kind: str
    tier: Tier
    status: JobStatus
    cost: int
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    # A pipeline's next step and its finished steps' results (lib/pipelines.py); else absent.
    step: int | None = None
    steps: dict[str, Any] | None = None
    # While the job waits for its model (detached mode): {position, ahead, eta_s}.
    queue: dict[str, int] | None = None

    def public(self) -> dict[str, Any]:
        absent = ({"step", "steps"} if self.steps is None else set()) | (
            {"queue"} if self.queue is None else set()
        )
        return self.model_dump(mode="json", exclude=absent or None)


class SubmitRequest(BaseModel):
    """The body of `POST /api/jobs`; `input` is validated against the kind's model afterwards."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    input: dict[str, Any]
    tier: Literal["auto", "paid", "free"] = "auto"


class Me(BaseModel):
    user_id: str
    coins: int
    free_jobs_left_today: int
    active_jobs: int
