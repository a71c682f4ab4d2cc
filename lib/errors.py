"""One error hierarchy for the whole project.

Every error carries a stable `code` (see `lib.models.ErrorCode`) and the HTTP status the producer
answers with. The worker maps the same classes to QStash outcomes: `RetryableError` → 5xx/429 with
`Retry-After`, `PermanentError` → 489 with `Upstash-NonRetryable-Error: true`.
"""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base class: a failure with a stable code, a human message and an HTTP status."""

    code = "internal"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details
        self.retry_after = retry_after


class ConfigError(AppError):
    """The configuration is invalid; the message lists every problem found."""

    code = "config_error"


class InputError(AppError):
    """The caller sent something we cannot accept; nothing was changed."""

    code = "invalid_input"
    status = 400


class AuthError(AppError):
    """The caller is not authenticated, or not allowed to see this resource."""

    code = "unauthorized"
    status = 401


class NotFoundError(AppError):
    """The resource does not exist, or belongs to someone else."""

    code = "not_found"
    status = 404


class ConflictError(AppError):
    """The request conflicts with the resource's current state."""

    code = "conflict"
    status = 409


class QuotaError(AppError):
    """Neither coins nor free daily jobs cover this job."""

    code = "quota_exhausted"
    status = 402


class RateLimitError(AppError):
    """Admission refused this job for now; `retry_after` says when to try again."""

    code = "rate_limited"
    status = 429


class RetryableError(AppError):
    """A transient failure: the same work may succeed later (after `retry_after` seconds)."""

    code = "retryable"
    status = 503


class UnavailableError(RetryableError):
    """A dependency (Redis, the database or the broker) is unreachable."""

    code = "unavailable"
    status = 503


class PermanentError(AppError):
    """A failure that retrying will not fix; the job fails and is refunded."""

    code = "permanent"
    status = 500
