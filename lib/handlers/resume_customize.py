"""resume_customize: rewrite a resume for one job description, truthfully."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from lib.handlers.base import Context, Handler, Prompts
from lib.handlers.job_match import MatchResult
from lib.models import JobInput


class CustomizeInput(JobInput):
    match: MatchResult | None = None


class Change(BaseModel):
    section: str = Field(description="The resume section that changed.")
    change: str = Field(description="What was changed.")
    reason: str = Field(description="Why it helps for this job.")


class CustomizeResult(BaseModel):
    resume_markdown: str = Field(min_length=1, description="The tailored resume in Markdown.")
    changes: list[Change] = Field(description="Every meaningful change, for the user to review.")


PROMPTS: Prompts = {
    "en": (
        "You are a professional resume writer. Tailor the resume to the job description: reorder "
        "and rephrase to put the most relevant experience first, mirror the posting's vocabulary "
        "where it is truthful, quantify results that the resume already states, and cut what is "
        "irrelevant. Never add skills, employers, titles, dates or numbers that are not in the "
        "original. Return the full resume in Markdown and a list of the changes you made, as one "
        "JSON object that follows the schema.",
        "Job description:\n<<<\n{job_description}\n>>>\n\nResume:\n<<<\n{resume_text}\n>>>\n\n"
        "Earlier match analysis (may be empty):\n{match}",
    ),
    "zh": (
        "你是一位专业的简历顾问。请根据职位描述定制这份简历：调整顺序和措辞，把最相关的经历"
        "放在前面；在真实的前提下使用职位描述中的术语；量化简历中已经给出的成果；删去无关内容。"
        "绝不能添加原简历中没有的技能、雇主、职位、日期或数字。请以一个符合 schema 的 JSON 对象"
        "返回完整的 Markdown 简历以及所做修改的列表，内容使用中文。",
        "职位描述：\n<<<\n{job_description}\n>>>\n\n简历：\n<<<\n{resume_text}\n>>>\n\n"
        "此前的匹配分析（可能为空）：\n{match}",
    ),
}


def handle(ctx: Context, job_input: CustomizeInput) -> CustomizeResult:
    match = job_input.match.model_dump_json() if job_input.match else "{}"
    result = ctx.structured(
        CustomizeResult,
        PROMPTS,
        {
            "resume_text": job_input.resume_text,
            "job_description": job_input.job_description,
            "match": json.dumps(json.loads(match), ensure_ascii=False),
        },
    )
    assert isinstance(result, CustomizeResult)
    return result


HANDLER = Handler(
    kind="resume_customize",
    cost=2,
    input_model=CustomizeInput,
    result_model=CustomizeResult,
    handle=handle,
    expected_chars=2500,
)
