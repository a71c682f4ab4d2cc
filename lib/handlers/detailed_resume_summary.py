"""detailed_resume_summary: a structured digest of a whole resume, role by role."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lib.handlers.base import Context, Handler, Prompts
from lib.handlers.resume_summary import MAX_PROMPT_CHARS, ResumeInput, fields


class Role(BaseModel):
    title: str = Field(description="The job title.")
    organisation: str = Field(description="The employer, or the project for freelance work.")
    period: str = Field(description="The dates as the resume gives them, e.g. 2021-2024.")
    achievements: list[str] = Field(description="What the candidate did there, with results.")


class SkillGroup(BaseModel):
    category: str = Field(description="e.g. Languages, Frameworks, Cloud, Soft skills.")
    skills: list[str] = Field(min_length=1)


class DetailedResumeSummaryResult(BaseModel):
    headline: str = Field(min_length=1, description="One line: the candidate's role and level.")
    summary: str = Field(min_length=1, description="A paragraph on the whole career.")
    experience: list[Role] = Field(description="Every role, most recent first.")
    skills: list[SkillGroup] = Field(description="The skills, grouped by category.")
    education: list[str] = Field(description="Degrees and certifications, one per item.")
    red_flags: list[str] = Field(
        description="Gaps, short stints or unclear claims a recruiter would ask about."
    )


PROMPTS: Prompts = {
    "en": (
        "You are an experienced recruiter writing a candidate brief. Read the resume and return "
        "a structured digest: a one-line headline, a paragraph on the whole career, every role "
        "(most recent first) with its title, organisation, period and achievements, the skills "
        "grouped by category, education and certifications, and the points a recruiter would "
        "ask about (employment gaps, short stints, vague claims). Use only what the resume "
        "says; never invent dates or numbers. Answer with one JSON object that follows the "
        "schema.",
        "Resume:\n<<<\n{resume_text}\n>>>",
    ),
    "zh": (
        "你是一位经验丰富的招聘专家，正在撰写候选人简报。请阅读简历并返回结构化摘要：一行标题，"
        "一段概括整个职业经历的文字，按时间倒序列出每段工作经历（职位、单位、时间和成果），"
        "按类别分组的技能，教育背景和证书，以及招聘方会追问的问题（空窗期、短期任职、模糊的表述）。"
        "只使用简历中的信息，不得编造日期或数字。"
        "请只输出一个符合 schema 的 JSON 对象，内容使用中文。",
        "简历：\n<<<\n{resume_text}\n>>>",
    ),
}


def handle(ctx: Context, job_input: ResumeInput) -> DetailedResumeSummaryResult:
    result = ctx.structured(DetailedResumeSummaryResult, PROMPTS, fields(job_input))
    assert isinstance(result, DetailedResumeSummaryResult)
    return result


HANDLER = Handler(
    kind="detailed_resume_summary",
    cost=2,
    input_model=ResumeInput,
    result_model=DetailedResumeSummaryResult,
    handle=handle,
    expected_chars=2500,
    prompts=PROMPTS,
    fields=fields,
    max_prompt_chars=MAX_PROMPT_CHARS,
)
