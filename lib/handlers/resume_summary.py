"""resume_summary: a short profile of a candidate from their resume alone."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lib.handlers.base import Context, Handler, Prompts
from lib.models import MAX_RESUME_CHARS

# The framing around the resume in the longest user prompt, with room to spare.
MAX_PROMPT_CHARS = MAX_RESUME_CHARS + 500


class ResumeInput(BaseModel):
    """The input of the kinds that read a resume only."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    resume_text: str = Field(min_length=1, max_length=MAX_RESUME_CHARS)


def fields(job_input: ResumeInput) -> dict[str, str]:
    """The prompt's one field: the resume."""
    return {"resume_text": job_input.resume_text}


class ResumeSummaryResult(BaseModel):
    headline: str = Field(min_length=1, description="One line: the candidate's role and level.")
    summary: str = Field(min_length=1, description="Two or three sentences on the profile.")
    years_experience: int | None = Field(
        ge=0, le=70, description="Years of professional experience, or null if unclear."
    )
    top_skills: list[str] = Field(description="The five to ten strongest skills, best first.")


PROMPTS: Prompts = {
    "en": (
        "You are an experienced recruiter. Read the resume and summarise the candidate for a "
        "hiring manager who has ten seconds: a one-line headline (role and level), two or three "
        "sentences on what they have done and are good at, their years of professional "
        "experience (null if the resume does not show it), and their strongest skills. Use only "
        "what the resume says. Answer with one JSON object that follows the schema.",
        "Resume:\n<<<\n{resume_text}\n>>>",
    ),
    "zh": (
        "你是一位经验丰富的招聘专家。请阅读简历，为只有十秒钟的招聘经理概括这位候选人："
        "一行标题（岗位和级别），两三句话说明其经历和擅长之处，工作年限（简历中看不出时为 null），"
        "以及最突出的技能。只使用简历中的信息。"
        "请只输出一个符合 schema 的 JSON 对象，内容使用中文。",
        "简历：\n<<<\n{resume_text}\n>>>",
    ),
}


def handle(ctx: Context, job_input: ResumeInput) -> ResumeSummaryResult:
    result = ctx.structured(ResumeSummaryResult, PROMPTS, fields(job_input))
    assert isinstance(result, ResumeSummaryResult)
    return result


HANDLER = Handler(
    kind="resume_summary",
    cost=1,
    input_model=ResumeInput,
    result_model=ResumeSummaryResult,
    handle=handle,
    expected_chars=600,
    prompts=PROMPTS,
    fields=fields,
    max_prompt_chars=MAX_PROMPT_CHARS,
)
