"""interview_prep: the questions this candidate should expect for this job, with outlines."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from lib.handlers.base import Context, Handler, Prompts
from lib.handlers.job_match import MatchResult
from lib.models import JobInput


class PrepInput(JobInput):
    match: MatchResult | None = None


class Question(BaseModel):
    question: str = Field(description="The question as an interviewer would ask it.")
    why_asked: str = Field(description="What the interviewer wants to learn.")
    answer_outline: list[str] = Field(description="Points of a strong answer, from the resume.")


class PrepResult(BaseModel):
    questions: list[Question] = Field(min_length=1)
    focus_areas: list[str] = Field(description="Topics to prepare most, given the gaps.")


PROMPTS: Prompts = {
    "en": (
        "You are a hiring manager preparing a candidate for an interview. From the job "
        "description and the resume, write the questions this candidate is most likely to be "
        "asked: behavioural, technical and role-specific, and especially about the gaps between "
        "the resume and the posting. For each, say why it is asked and outline a strong answer "
        "that uses only the candidate's real experience. Then list the focus areas to prepare. "
        "Answer with one JSON object that follows the schema.",
        "Job description:\n<<<\n{job_description}\n>>>\n\nResume:\n<<<\n{resume_text}\n>>>\n\n"
        "Earlier match analysis (may be empty):\n{match}",
    ),
    "zh": (
        "你是一位招聘经理，正在帮助候选人准备面试。请根据职位描述和简历，写出该候选人最可能被"
        "问到的问题：行为类、技术类和岗位相关问题，尤其是简历与职位要求之间的差距。对每个问题，"
        "说明提问的目的，并给出只基于候选人真实经历的回答要点。最后列出需要重点准备的方向。"
        "请只输出一个符合 schema 的 JSON 对象，内容使用中文。",
        "职位描述：\n<<<\n{job_description}\n>>>\n\n简历：\n<<<\n{resume_text}\n>>>\n\n"
        "此前的匹配分析（可能为空）：\n{match}",
    ),
}


def handle(ctx: Context, job_input: PrepInput) -> PrepResult:
    match = job_input.match.model_dump() if job_input.match else {}
    result = ctx.structured(
        PrepResult,
        PROMPTS,
        {
            "resume_text": job_input.resume_text,
            "job_description": job_input.job_description,
            "match": json.dumps(match, ensure_ascii=False),
        },
    )
    assert isinstance(result, PrepResult)
    return result


HANDLER = Handler(
    kind="interview_prep",
    cost=2,
    input_model=PrepInput,
    result_model=PrepResult,
    handle=handle,
    expected_chars=2500,
)
