"""Pipelines: one job that runs several kinds in turn, each step its own QStash message.

A pipeline is registered like a kind (a `Handler` whose `pipeline` is set; see
lib/handlers/match_from_image.py): it is submitted, charged, cancelled and streamed once. The
job's `step` (in the database) says which step a delivery runs; each step's result is kept in
the job's `steps` when it succeeds, so a retry of step 3 never runs steps 1 and 2 again.

`on_success` is the executor's one call into this module: after a step's result validated, it
keeps it (`cs_advance_step`: the next step, its own retry budget, the job queued) and publishes
the next step's message, deduplicated by job and step. The last step's success finishes the job
with every step's result. A step whose `stop_when` holds for its result ends the pipeline there:
the job succeeds with the results of the steps that ran (null for the others) and `stopped_by`
naming that step (null when every step ran), and is charged as submitted: the step's verdict is
delivered output. A failure or cancel follows the refund rule for the whole job: the finished
steps' results are readable in the job, so they count as delivered output.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from lib.errors import AppError, PermanentError, RetryableError
from lib.events import StreamClosed
from lib.models import ErrorCode

if TYPE_CHECKING:
    from lib.executor import Executor
    from lib.handlers.base import Context
    from lib.leases import Lease
    from lib.models import Job
    from lib.queue.producer import Publisher

log = logging.getLogger("cs.pipelines")

LEASE_LOST = "lease_lost"  # lib.executor's code: write nothing more, let the broker redeliver
STOPPED_BY = "stopped_by"  # a pipeline's result: the step that ended it early, else None


@dataclass(frozen=True)
class Step:
    """One step: a registered kind, and its input from the pipeline's input and the results
    of the steps before it (by kind). `stop_when`, if set, is asked about the step's own result
    (validated by its kind's result model, as JSON): True ends the pipeline after this step."""

    kind: str
    build: Callable[[Any, dict[str, Any]], dict[str, Any]]
    stop_when: Callable[[dict[str, Any]], bool] | None = None

    def stops(self, result: dict[str, Any]) -> bool:
        """Whether the pipeline ends after this step, given the step's `result`."""
        return self.stop_when is not None and bool(self.stop_when(result))


@dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...]

    def handle(self, ctx: Context, job_input: Any) -> BaseModel:
        """Run the job's current step (`ctx.step`) with its own kind's input, prompts and
        result model, after a `step` event. Raises what the step's handler raises, and
        PermanentError(invalid_input) when an earlier result does not make a valid input."""
        from lib import handlers

        step = self.steps[ctx.step]
        handler = handlers.get(step.kind)
        assert handler is not None, step.kind
        try:
            step_input = handler.input_model.model_validate(step.build(job_input, ctx.steps))
        except ValidationError as exc:
            raise PermanentError(
                f"step {ctx.step + 1} ({step.kind}) got no valid input from the steps before",
                code=ErrorCode.INVALID_INPUT,
            ) from exc
        ctx.events.step(ctx.step, step.kind, len(self.steps))
        ctx.kind, ctx.expected_chars = step.kind, handler.expected_chars
        return handler.handle(ctx, step_input)


def on_success(executor: Executor, job: Job, lease: Lease, payload: dict[str, Any]) -> Any:
    """What the executor finishes the job with: `payload` for a kind; for a pipeline's last
    step, or a step whose `stop_when` holds, every step's result by kind (None for the steps
    that did not run) and `stopped_by` (that step's kind, or None after the last step); None
    when a pipeline's step was kept and its next step queued.

    Raises StreamClosed (cancelled meanwhile) and RetryableError(lease_lost) (another attempt
    holds the job), as the executor expects of its own writes."""
    from lib import handlers

    handler = handlers.get(job.kind)
    pipeline: Pipeline | None = handler.pipeline if handler is not None else None
    if handler is None or pipeline is None:
        return payload
    step = pipeline.steps[lease.step]
    name = step.kind
    if lease.step + 1 >= len(pipeline.steps):
        return {**lease.steps, name: payload, STOPPED_BY: None}
    if step.stops(payload):
        log.info("pipeline stopped", extra={"job_id": job.id, "step": lease.step, "kind": name})
        unrun = {later.kind: None for later in pipeline.steps[lease.step + 1 :]}
        return {**lease.steps, name: payload, **unrun, STOPPED_BY: name}
    if lease.events is not None:  # the step's held text, before its result is kept
        lease.events.settle()
    outcome = executor.store.advance_step(
        job.id,
        job.attempts,
        lease.step,
        name,
        payload,
        chars=len(json.dumps(payload, ensure_ascii=False)),
        typical_chars=lease.typical or handler.expected_chars,
    )
    if outcome == "terminal":
        raise StreamClosed(job.id)
    if outcome != "advanced":
        lease.lost = True
        raise RetryableError("the job's lease was lost", code=LEASE_LOST, retry_after=1)
    log.info("step done", extra={"job_id": job.id, "step": lease.step, "kind": name})
    # The job stays admitted (its slots) between steps; only this attempt's lease goes.
    executor.state.release(job.id, lease.tier, lease.user_id, lease.token, slots=False)
    publish_step(executor, job, lease.user_id, lease.step + 1, pipeline)
    return None


def publish_step(executor: Executor, job: Job, user_id: str, step: int, pipeline: Pipeline) -> None:
    """Publish the message of `step`, deduplicated by job and step. A broker that refuses it
    leaves the job queued at that step: the reconciler re-publishes it
    (RECONCILE_QUEUED_AFTER_SECONDS)."""
    settings = executor.settings
    try:
        _publisher(executor).publish(
            job.id,
            user_id=user_id,
            tier=job.tier,
            model=settings.model_for(job.tier, pipeline.steps[step].kind),
            dedup_id=f"{job.id}:step:{step}",
        )
    except AppError as exc:
        log.warning(
            "could not publish the next step; the reconciler will",
            extra={"job_id": job.id, "step": step, "code": exc.code},
        )


# One publisher per executor (so per worker process), built on the first step it publishes.
_publishers: weakref.WeakKeyDictionary[Executor, Publisher] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _publisher(executor: Executor) -> Publisher:
    with _lock:
        publisher = _publishers.get(executor)
        if publisher is None:
            from lib.queue import producer

            publisher = _publishers[executor] = producer.from_settings(executor.settings)
        return publisher
