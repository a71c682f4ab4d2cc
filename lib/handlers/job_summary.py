"""job_summary: the essentials of a job description, from the posting alone."""

from __future__ import annotations

import json
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from lib.handlers.base import Context, Handler, Prompts
from lib.models import (
    MAX_JOB_DESCRIPTION_CHARS,
    MAX_MATCH_ITEM_CHARS,
    MAX_MATCH_LIST_ITEMS,
    MAX_MATCH_PROMPT_CHARS,
    MAX_MATCH_SUMMARY_CHARS,
)

# The framing around the posting in the longest user prompt, with room to spare.
MAX_PROMPT_CHARS = MAX_JOB_DESCRIPTION_CHARS + 500
MAX_TITLE_CHARS = 200

Seniority = Literal["intern", "junior", "mid", "senior", "lead", "executive", "unknown"]


class JobDescriptionInput(BaseModel):
    """The input of the kinds that read a job description only."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    job_description: str = Field(min_length=1, max_length=MAX_JOB_DESCRIPTION_CHARS)


def fields(job_input: JobDescriptionInput) -> dict[str, str]:
    """The prompt's one field: the job description."""
    return {"job_description": job_input.job_description}


class JobSummaryResult(BaseModel):
    title: str = Field(min_length=1, description="The role's title as the posting names it.")
    company: str | None = Field(description="The employer, or null if the posting hides it.")
    seniority: Seniority
    summary: str = Field(min_length=1, description="Two or three sentences on the role.")
    responsibilities: list[str] = Field(description="What the person will do.")
    must_have: list[str] = Field(description="Requirements the posting insists on.")
    nice_to_have: list[str] = Field(description="Requirements it calls optional or a plus.")
    keywords: list[str] = Field(description="Skills and terms a resume should mention.")


SummaryItem = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=MAX_MATCH_ITEM_CHARS)
]
SummaryList = Annotated[list[SummaryItem], Field(max_length=MAX_MATCH_LIST_ITEMS)]


class JobSummaryInput(BaseModel):
    """A `JobSummaryResult` sent back as input (`job_summary` of pre_match_audit): the same
    fields, each bounded, strictly typed, and nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = Field(max_length=MAX_TITLE_CHARS)
    company: str | None = Field(max_length=MAX_TITLE_CHARS)
    seniority: Seniority
    summary: str = Field(max_length=MAX_MATCH_SUMMARY_CHARS)
    responsibilities: SummaryList
    must_have: SummaryList
    nice_to_have: SummaryList
    keywords: SummaryList

    @model_validator(mode="after")
    def _fits_the_prompt(self) -> Self:
        size = len(self.rendered())
        if size > MAX_MATCH_PROMPT_CHARS:
            raise ValueError(f"is {size} characters as JSON; at most {MAX_MATCH_PROMPT_CHARS}")
        return self

    def rendered(self) -> str:
        """The summary as the prompt shows it."""
        return json.dumps(self.model_dump(), ensure_ascii=False)


PROMPTS: Prompts = {
    "en": (
        "You are an experienced recruiter. Read the job description and extract what a "
        "candidate needs to know: the title, the employer (null if not named), the seniority, "
        "a two- or three-sentence summary, the responsibilities, the must-have and the "
        "nice-to-have requirements, kept apart as the posting words them, and the keywords a "
        "resume should mention. Use only what the posting says. Answer with one JSON object "
        "that follows the schema.",
        "Job description:\n<<<\n{job_description}\n>>>",
    ),
    "zh": (
        "你是一位经验丰富的招聘专家。请阅读职位描述，提取候选人需要了解的内容：职位名称、"
        "雇主（未写明时为 null）、级别、两三句话的概述、工作职责、必备要求和加分项（按职位描述"
        "的措辞分开列出），以及简历中应当出现的关键词。只使用职位描述中的信息。"
        "请只输出一个符合 schema 的 JSON 对象，内容使用中文。",
        "职位描述：\n<<<\n{job_description}\n>>>",
    ),
}


def handle(ctx: Context, job_input: JobDescriptionInput) -> JobSummaryResult:
    result = ctx.structured(JobSummaryResult, PROMPTS, fields(job_input))
    assert isinstance(result, JobSummaryResult)
    return result


HANDLER = Handler(
    kind="job_summary",
    cost=1,
    input_model=JobDescriptionInput,
    result_model=JobSummaryResult,
    handle=handle,
    expected_chars=1200,
    prompts=PROMPTS,
    fields=fields,
    max_prompt_chars=MAX_PROMPT_CHARS,
)
