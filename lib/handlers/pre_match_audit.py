"""pre_match_audit: whether a resume and a job description are fit to be matched at all."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lib.handlers.base import Context, Handler, Prompts, text_fields
from lib.handlers.job_summary import JobSummaryInput
from lib.models import MAX_PROMPT_WITH_MATCH_CHARS, JobInput


class AuditInput(JobInput):
    job_summary: JobSummaryInput | None = None


def fields(job_input: AuditInput) -> dict[str, str]:
    """The prompt's fields: the two texts, and the job summary as JSON ("{}" if none)."""
    summary = job_input.job_summary.rendered() if job_input.job_summary else "{}"
    return {**text_fields(job_input), "job_summary": summary}


class AuditIssue(BaseModel):
    severity: Literal["blocker", "warning", "info"] = Field(
        description="blocker: a match would be meaningless until it is fixed."
    )
    target: Literal["resume", "job_description", "both"]
    problem: str = Field(description="What is wrong, in one sentence.")
    fix: str = Field(description="What the user should do about it.")


class AuditResult(BaseModel):
    proceed: bool = Field(description="True when a match analysis is worth running as is.")
    resume_is_resume: bool = Field(description="The resume text really is a resume.")
    job_description_is_job: bool = Field(description="The job text really is a job posting.")
    same_language: bool = Field(description="Both texts are in the same language.")
    issues: list[AuditIssue] = Field(description="Every problem found, blockers first.")
    summary: str = Field(min_length=1, description="One or two sentences for the user.")


PROMPTS: Prompts = {
    "en": (
        "You check inputs before a resume is matched against a job. Decide whether the resume "
        "text is really a resume and the job text is really a job posting, whether they are in "
        "the same language, and whether anything would make a match analysis meaningless or "
        "misleading: empty or truncated sections, missing dates or titles, a posting without "
        "requirements, text garbled by OCR, or a resume from a completely different field. "
        "List each problem with its severity and a fix, set proceed to false if any is a "
        "blocker, and sum up for the user. Answer with one JSON object that follows the schema.",
        "Job description:\n<<<\n{job_description}\n>>>\n\nResume:\n<<<\n{resume_text}\n>>>\n\n"
        "Earlier job summary (may be empty):\n{job_summary}",
    ),
    "zh": (
        "你负责在简历与职位匹配之前检查输入。请判断简历文本是否确实是简历、职位文本是否确实是"
        "职位描述、两者是否使用同一种语言，以及是否存在会让匹配分析失去意义或产生误导的问题："
        "空白或被截断的部分、缺少日期或职位、没有任何要求的职位描述、被 OCR 弄乱的文字，"
        "或者来自完全不同领域的简历。列出每个问题及其严重程度和解决办法，只要有一个阻断性问题"
        "就将 proceed 设为 false，并为用户写一段总结。请只输出一个符合 schema 的 JSON 对象，"
        "内容使用中文。",
        "职位描述：\n<<<\n{job_description}\n>>>\n\n简历：\n<<<\n{resume_text}\n>>>\n\n"
        "此前的职位摘要（可能为空）：\n{job_summary}",
    ),
}


def handle(ctx: Context, job_input: AuditInput) -> AuditResult:
    result = ctx.structured(AuditResult, PROMPTS, fields(job_input))
    assert isinstance(result, AuditResult)
    return result


HANDLER = Handler(
    kind="pre_match_audit",
    cost=1,
    input_model=AuditInput,
    result_model=AuditResult,
    handle=handle,
    expected_chars=900,
    prompts=PROMPTS,
    fields=fields,
    max_prompt_chars=MAX_PROMPT_WITH_MATCH_CHARS,
)
