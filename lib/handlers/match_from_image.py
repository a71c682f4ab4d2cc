"""match_from_image: a pipeline from a screenshot of a job posting to a match against a resume.

ocr_extract (the posting's text) → job_summary → pre_match_audit (with that summary) →
job_match, each step its own message with its own attempts (lib/pipelines.py). Submitted,
charged, cancelled and streamed once; the result holds every step's result by kind. An audit
that answers `proceed: false` ends the pipeline before job_match (no match is worth paying a
model call for): the job succeeds with `job_match` null and `stopped_by: "pre_match_audit"`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lib.handlers.base import Context, Handler
from lib.handlers.job_match import MatchResult
from lib.handlers.job_summary import JobSummaryResult
from lib.handlers.ocr_extract import Language, OcrResult, images
from lib.handlers.pre_match_audit import AuditResult
from lib.images import ImageRef
from lib.models import MAX_JOB_DESCRIPTION_CHARS, MAX_RESUME_CHARS
from lib.pipelines import Pipeline, Step


class MatchFromImageInput(BaseModel):
    """A screenshot of a job posting, and the resume to match against it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    image: ImageRef
    resume_text: str = Field(min_length=1, max_length=MAX_RESUME_CHARS)
    language: Language = Field("en", description="The language of the OCR step's answer.")


def fields(job_input: MatchFromImageInput) -> dict[str, str]:
    """The text the pipeline's steps read from the input itself: the resume."""
    return {"resume_text": job_input.resume_text}


class MatchFromImageResult(BaseModel):
    # The job's result always carries every key (lib/pipelines.py), null or not.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    ocr_extract: OcrResult
    job_summary: JobSummaryResult
    pre_match_audit: AuditResult
    job_match: MatchResult | None = Field(
        None, description="Null when the pipeline stopped before it (see stopped_by)."
    )
    stopped_by: Literal["pre_match_audit"] | None = Field(
        None,
        description="The step that ended the pipeline early (pre_match_audit: its proceed was "
        "false, its summary and issues say why); null when every step ran.",
    )


def _posting(steps: dict[str, Any]) -> str:
    """The posting's text as OCR read it, within job_description's bound."""
    return str(steps["ocr_extract"]["text"])[:MAX_JOB_DESCRIPTION_CHARS]


PIPELINE = Pipeline(
    (
        Step(
            "ocr_extract",
            lambda i, _: {"image": i.image.model_dump(), "language": i.language},
        ),
        Step("job_summary", lambda _, s: {"job_description": _posting(s)}),
        Step(
            "pre_match_audit",
            lambda i, s: {
                "resume_text": i.resume_text,
                "job_description": _posting(s),
                "job_summary": s["job_summary"],
            },
            # "Audit, and only then match": a meaningless match is not worth a model call.
            stop_when=lambda audit: not audit["proceed"],
        ),
        Step(
            "job_match",
            lambda i, s: {"resume_text": i.resume_text, "job_description": _posting(s)},
        ),
    )
)


def handle(ctx: Context, job_input: MatchFromImageInput) -> BaseModel:
    return PIPELINE.handle(ctx, job_input)


HANDLER = Handler(
    kind="match_from_image",
    cost=4,
    input_model=MatchFromImageInput,
    result_model=MatchFromImageResult,
    handle=handle,
    # The four steps' typical answers together: the refund rule weighs the whole job.
    expected_chars=2500 + 1200 + 900 + 900,
    fields=fields,
    max_prompt_chars=MAX_RESUME_CHARS,
    images=images,
    pipeline=PIPELINE,
)
