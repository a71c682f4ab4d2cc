"""job_match: how well a resume fits a job description."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lib.handlers.base import Context, Handler, Prompts
from lib.models import JobInput


class MatchResult(BaseModel):
    score: int = Field(ge=0, le=100, description="Overall fit, 0 (none) to 100 (ideal).")
    strengths: list[str] = Field(description="Where the candidate clearly meets the role.")
    gaps: list[str] = Field(description="Requirements the resume does not show.")
    missing_keywords: list[str] = Field(
        description="Terms from the posting absent from the resume."
    )
    summary: str = Field(description="Two or three sentences a recruiter would read first.")


PROMPTS: Prompts = {
    "en": (
        "You are an experienced technical recruiter. Compare the candidate's resume with the job "
        "description and judge the fit honestly. Base every point on evidence in the two texts; "
        "never invent experience. Score 0-100, where 70 means a recruiter would call the "
        "candidate. List concrete strengths, concrete gaps, and the important keywords from the "
        "posting that the resume lacks. Answer with one JSON object that follows the schema.",
        "Job description:\n<<<\n{job_description}\n>>>\n\nResume:\n<<<\n{resume_text}\n>>>",
    ),
    "zh": (
        "你是一位经验丰富的招聘专家。请将候选人的简历与职位描述进行对比，客观评估匹配程度。"
        "每一条结论都必须以两段文本中的内容为依据，不得编造经历。给出 0-100 的分数，"
        "70 分表示招聘方会联系该候选人。列出具体的优势、具体的差距，以及职位描述中出现"
        "但简历缺少的重要关键词。请只输出一个符合 schema 的 JSON 对象，内容使用中文。",
        "职位描述：\n<<<\n{job_description}\n>>>\n\n简历：\n<<<\n{resume_text}\n>>>",
    ),
}


def handle(ctx: Context, job_input: JobInput) -> MatchResult:
    result = ctx.structured(
        MatchResult,
        PROMPTS,
        {
            "resume_text": job_input.resume_text,
            "job_description": job_input.job_description,
        },
    )
    assert isinstance(result, MatchResult)
    return result


HANDLER = Handler(
    kind="job_match",
    cost=1,
    input_model=JobInput,
    result_model=MatchResult,
    handle=handle,
    expected_chars=900,
)
