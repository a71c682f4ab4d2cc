"""The producer's operations: submit, read, list, cancel, me, and the event stream.

`api/` parses HTTP and calls these; nothing here knows about Flask. Submit takes three
sequential round trips, each of which a user in production pays: idempotency, tier, charge and
insert (one SQL call), admission and the `queued` event (one Lua script), publish. A refusal or
failure after the charge takes it back in one more SQL call: withdrawn when admission refused
or Redis was down, failed and refunded when the broker was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lib import images, jobstream, userstream
from lib.boxes import destination
from lib.config import Settings
from lib.errors import (
    AppError,
    ConflictError,
    InputError,
    NotFoundError,
    QuotaError,
    UnavailableError,
)
from lib.events import HeldStream, close_stream, data, emit_terminal
from lib.models import ErrorCode, EventType, Job, JobStatus, Me, StreamStatus, SubmitRequest
from lib.state import State
from lib.store import Cancel, Store

if TYPE_CHECKING:  # the api/ functions import these only when they build a Producer
    from lib.auth import Verifier
    from lib.queue.producer import Publisher
    from lib.storage import Storage

log = logging.getLogger("cs.producer")


def _field_errors(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    return {(prefix + ".".join(str(p) for p in e["loc"])) or "body": e["msg"] for e in exc.errors()}


def request_hash(kind: str, job_input: dict[str, Any], tier: str) -> str:
    canonical = json.dumps(
        {"kind": kind, "input": job_input, "tier": tier},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


_CURSOR = re.compile(r"\A[0-9]{1,20}(-[0-9]{1,20})?\Z")


def validate_cursor(cursor: str | None) -> str | None:
    """A resume cursor (Last-Event-ID) must be a stream entry id; raises InputError otherwise."""
    if not cursor:
        return None
    if _CURSOR.match(cursor) and all(int(part) < 2**64 for part in cursor.split("-")):
        return cursor
    raise InputError("invalid Last-Event-ID", details={"last_event_id": "a stream entry id"})


def _nul_fields(value: Any, path: str) -> dict[str, str]:
    if isinstance(value, str):
        return {path: "must not contain U+0000"} if "\x00" in value else {}
    found: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(_nul_fields(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.update(_nul_fields(item, f"{path}.{index}"))
    return found


def validate_job_id(job_id: str) -> str:
    """Job ids are UUIDs; anything else cannot name a job (404, not 400: nothing leaks)."""
    try:
        return str(uuid.UUID(job_id))
    except (ValueError, TypeError):
        raise NotFoundError("no such job") from None


@dataclass
class Submitted:
    job: Job
    created: bool
    stream_token: str
    user_stream_token: str

    def body(self) -> dict[str, Any]:
        return {
            "job": self.job.public(),
            "events_url": f"/api/jobs/{self.job.id}/events?token={self.stream_token}",
            "stream_token": self.stream_token,
            "user_events_url": f"/api/events?token={self.user_stream_token}",
        }


class Producer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        state: State,
        publisher: Publisher,
        verifier: Verifier,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.publisher = publisher
        self.verifier = verifier
        self.storage = storage

    # Submit ------------------------------------------------------------------------------------
    def parse(self, body: Any) -> tuple[SubmitRequest, dict[str, Any], int]:
        """Validate a submit body. Returns (request, normalised input, cost); raises InputError."""
        from lib import handlers  # their models load on the first submit, not on every cold start

        if not isinstance(body, dict):
            raise InputError("the body must be a JSON object", details={"body": "not an object"})
        try:
            req = SubmitRequest.model_validate(body)
        except ValidationError as exc:
            raise InputError("the request is invalid", details=_field_errors(exc)) from None
        handler = handlers.get(req.kind)
        if handler is None:
            raise InputError(
                "unknown job kind",
                details={"kind": f"must be one of {sorted(handlers.kinds())}"},
            )
        try:
            job_input = handler.input_model.model_validate(req.input)
        except ValidationError as exc:
            raise InputError("the input is invalid", details=_field_errors(exc, "input.")) from None
        sizes = handler.prompt_chars(job_input)
        if sizes["total"] > handler.max_prompt_chars:  # each field fits, but not all together
            total = sizes.pop("total")
            details = {f"input.{name}": f"{size} characters" for name, size in sizes.items()}
            details["input"] = (
                f"the prompt would be {total} characters; {req.kind} allows at most "
                f"{handler.max_prompt_chars}"
            )
            raise InputError("the input is too large for one prompt", details=details)
        # Every field, defaults and nulls included: the stored input validates again in the
        # worker exactly as it did here (a `job_summary` result with `company: null` is valid;
        # without the key it would not be), whatever the defaults become later.
        normalised = job_input.model_dump(mode="json")
        nul = _nul_fields(normalised, "input")
        if nul:  # Postgres cannot store U+0000 in text
            raise InputError("the input contains a NUL character", details=nul)
        return req, normalised, self.settings.cost(req.kind, handler.cost)

    def submit(self, user_id: str, body: Any, idempotency_key: str | None) -> Submitted:
        """Charge, admit and enqueue a job in three sequential round trips: one SQL call
        (idempotency, tier, charge, insert), one Lua script (admission and the `queued` event),
        one publish. A refusal or failure after the charge takes it back. Raises AppError
        subclasses; then nothing stays charged."""
        req, job_input, cost = self.parse(body)
        # An image job's uploads: the only extra round trip, and only image jobs pay it.
        images.check_job(lambda: self.storage, self.settings, user_id, req.kind, job_input)
        digest = request_hash(req.kind, job_input, req.tier)
        job_id = str(uuid.uuid4())
        result = self.store.submit_job(
            job_id=job_id,
            user_id=user_id,
            kind=req.kind,
            tier=req.tier,
            cost=cost,
            input=job_input,
            idempotency_key=idempotency_key,
            request_hash=digest,
        )
        if result["outcome"] != "created":
            return self._settled(result, user_id)
        job = Job.model_validate(result["job"])
        queued = data(job_id, status=StreamStatus.QUEUED, attempt=0)
        # Several worker boxes: the admission script also picks the one to publish to.
        boxes = self.settings.boxes if len(self.settings.boxes) > 1 else None
        try:
            picked = self.state.admit(
                job_id,
                job.tier,
                user_id,
                first_event=(EventType.STATUS, queued),
                index_max=userstream.INDEX_MAX,  # the user's event stream finds the job
                boxes=boxes,
            )
        except Exception:  # refused (429) or Redis unreachable (503): nothing may stay charged
            self._withdraw(job_id)
            raise
        try:
            self.publisher.publish(
                job_id,
                user_id=user_id,
                tier=job.tier,
                model=self.settings.model_for(job.tier, req.kind),
                box=destination(self.settings, picked),
            )
        except AppError as exc:
            self._abort(job, user_id, exc)
            raise UnavailableError("the job could not be queued; nothing was charged") from exc
        log.info(  # `user_id` is logged as its hash (lib.logs.JobFieldsFilter)
            "job submitted",
            extra={"job_id": job_id, "kind": req.kind, "tier": job.tier, "user_id": user_id},
        )
        return self._submitted(job, True, user_id)

    def _submitted(self, job: Job, created: bool, user_id: str) -> Submitted:
        return Submitted(
            job,
            created,
            self.verifier.mint_stream_token(job.id, user_id),
            self.verifier.mint_user_stream_token(user_id),
        )

    def _withdraw(self, job_id: str) -> None:
        try:
            self.store.withdraw_submit(job_id)
        except Exception:
            # The database failed too: the job stays queued and charged, never published, like a
            # message the broker lost (docs/reliability.md, "Known limits"); cancel refunds it.
            log.exception("could not withdraw a refused submit", extra={"job_id": job_id})

    def _settled(self, outcome: dict[str, Any], user_id: str) -> Submitted:
        kind = outcome["outcome"]
        if kind == "existing":
            job = Job.model_validate(outcome["job"])
            if not outcome.get("enqueued") and job.status == "queued":
                # Inserted by the two-call submit (`Store.submit`) that a producer older than
                # `submit_job` ran, which died before publishing: publish now (dedup id = job id).
                self.publisher.publish(
                    job.id,
                    user_id=user_id,
                    tier=job.tier,
                    model=self.settings.model_for(job.tier, job.kind),
                )
                self.store.mark_enqueued(job.id)
            return self._submitted(job, False, user_id)
        if kind == "idempotency_conflict":
            raise ConflictError(
                "this Idempotency-Key was used with a different request",
                code=ErrorCode.IDEMPOTENCY_CONFLICT,
            )
        details = {k: outcome[k] for k in ("coins", "free_jobs_left_today") if k in outcome}
        raise QuotaError("not enough coins and no free jobs left today", details=details or None)

    def _abort(self, job: Job, user_id: str, exc: AppError) -> None:
        log.warning("enqueue failed; refunding", extra={"job_id": job.id, "code": exc.code})
        self.store.abort_submit(job.id, ErrorCode.UNAVAILABLE, "the job could not be queued")
        try:
            emit_terminal(
                self.state,
                job.id,
                StreamStatus.FAILED,
                result=None,
                error={"code": ErrorCode.UNAVAILABLE, "message": "the job could not be queued"},
                attempt=0,
            )
        except AppError:
            pass  # Redis is down too; the stream expires and the DB says failed.
        self._release_quietly(job.id, job.tier, user_id)

    def _release_quietly(self, job_id: str, tier: str, user_id: str) -> None:
        try:
            self.state.release(job_id, tier, user_id)
        except AppError:
            log.warning(
                "could not release admission; it expires by itself", extra={"job_id": job_id}
            )

    # Reads -------------------------------------------------------------------------------------
    def get(self, job_id: str, user_id: str) -> Job:
        job = self.store.get_job(validate_job_id(job_id), user_id)
        if job is None:
            raise NotFoundError("no such job")
        if job.status == JobStatus.QUEUED and self.settings.execution_mode == "detached":
            # Waiting for its model: where it stands (one read; an outage leaves it out).
            model = self.settings.model_for(job.tier, job.kind)
            try:
                view = self.state.queue_view(job.id, job.tier, model)
            except AppError:
                view = None
            if view is not None:
                job = job.model_copy(update={"queue": view.public()})
        return job

    def list(self, user_id: str, limit: int, before: str | None) -> list[Job]:
        if before is not None:
            try:
                before = str(uuid.UUID(before))
            except ValueError:
                raise InputError("invalid cursor", details={"before": "not a job id"}) from None
        return self.store.list_jobs(user_id, limit, before)

    def me(self, user_id: str) -> Me:
        return self.store.me(user_id)

    def cancel(self, job_id: str, user_id: str) -> Job:
        """Cancel a queued or running job. It is refunded in full unless more than
        REFUND_MAX_DELIVERED_PCT of its output was delivered, as the worker recorded it before
        writing (decided in SQL, under the job's row lock). Raises NotFound/ConflictError."""
        outcome, job = self.store.cancel(validate_job_id(job_id), user_id)
        if outcome == Cancel.NOT_FOUND or job is None:
            raise NotFoundError("no such job")
        if outcome == Cancel.ALREADY_FINISHED:
            raise ConflictError(
                "the job has already finished",
                code=ErrorCode.ALREADY_FINISHED,
                details={"status": job.status},
            )
        try:
            # Closing the stream is also the worker's cancel flag.
            close_stream(self.state, job)
            # A running attempt hears it at once and closes its request to the model.
            self.state.announce_closed(job.id, StreamStatus.CANCELLED)
            self.state.release(job.id, job.tier, user_id)
        except AppError:
            log.warning(
                "cancel recorded; the worker will close the stream", extra={"job_id": job.id}
            )
        log.info("job cancelled", extra={"job_id": job.id, "user_id": user_id})
        return job

    # Events ------------------------------------------------------------------------------------
    def stream(
        self,
        job_id: str,
        after: str | None,
        *,
        max_seconds: float | None = None,
        heartbeat: float | None = None,
    ) -> Iterator[str]:
        """SSE frames of a job's events after `after` (lib.jobstream), ending after the
        terminal status or at `max_seconds` (the client reconnects with Last-Event-ID). Count it
        with `hold_stream`."""
        return jobstream.frames(
            self.state,
            job_id,
            after,
            max_seconds=self.settings.sse_max_seconds if max_seconds is None else max_seconds,
            heartbeat=self.settings.sse_heartbeat_seconds if heartbeat is None else heartbeat,
            poll=self.settings.sse_read_mode == "poll",
        )

    def user_stream(self, user_id: str, after: str | None) -> Iterator[str]:
        """SSE frames of all the user's active jobs (lib.userstream); InputError for a bad
        cursor. Count it with `hold_stream` like a job's stream."""
        return userstream.frames(
            self.state,
            user_id,
            after,
            max_seconds=self.settings.sse_max_seconds,
            heartbeat=self.settings.sse_heartbeat_seconds,
        )

    def hold_stream(self, user_id: str, frames: Iterator[str]) -> HeldStream:
        """Count `frames` (an event stream of either endpoint) as one of the user's open
        streams while it runs. Raises RateLimitError (stream_limit) when the user already has
        SSE_MAX_STREAMS_PER_USER open; the slot is freed when the stream ends or is closed,
        and lapses by itself if the process dies."""
        stream_id = uuid.uuid4().hex
        self.state.hold_stream(user_id, stream_id, self.settings.sse_max_streams_per_user)
        return HeldStream(
            self.state, user_id, stream_id, frames, self.settings.sse_max_streams_per_user
        )

    def heal_stream(self, job: Job) -> None:
        """A terminal job whose stream expired or was never closed gets its final events."""
        if job.status.terminal:
            close_stream(self.state, job)
