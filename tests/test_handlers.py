"""lib/handlers: the registry, language detection, result models, prompts, and JSON parsing."""

from __future__ import annotations

import importlib
import string
from typing import Any

import pytest
from pydantic import ValidationError

from lib import handlers
from lib.errors import PermanentError
from lib.handlers.base import detect_language
from lib.handlers.interview_prep import PrepResult
from lib.handlers.job_match import MatchResult
from lib.handlers.resume_customize import CustomizeResult
from lib.llm import parse_json

KINDS = {
    "job_match",
    "resume_customize",
    "interview_prep",
    "resume_summary",
    "detailed_resume_summary",
    "job_summary",
    "pre_match_audit",
    "ocr_extract",
    "job_vision_summary",
    "match_from_image",
}
# The fields each kind's user prompt template is documented to take.
FIELDS = {
    "job_match": {"resume_text", "job_description"},
    "resume_customize": {"resume_text", "job_description", "match"},
    "interview_prep": {"resume_text", "job_description", "match"},
    "resume_summary": {"resume_text"},
    "detailed_resume_summary": {"resume_text"},
    "job_summary": {"job_description"},
    "pre_match_audit": {"resume_text", "job_description", "job_summary"},
    "ocr_extract": {"document"},
    "job_vision_summary": {"document"},
}
# Pipelines (lib/pipelines.py) run other kinds' prompts: they have none of their own.
PIPELINES = {"match_from_image"}
MATCH = {
    "score": 72,
    "strengths": ["Python"],
    "gaps": ["Go"],
    "missing_keywords": ["Kafka"],
    "summary": "A good fit.",
}


def test_the_registry_holds_exactly_the_nine_kinds_and_one_pipeline() -> None:
    assert set(handlers.registry()) == KINDS


def test_each_registered_handler_is_filed_under_its_own_kind_with_a_positive_cost() -> None:
    for kind, handler in handlers.registry().items():
        assert handler.kind == kind
        assert handlers.get(kind) is handler
        assert handler.cost > 0


def test_an_unknown_kind_is_not_found() -> None:
    assert handlers.get("cover_letter") is None


def test_every_kind_is_listed_without_its_import_and_named_by_its_module() -> None:
    assert handlers.kinds() == KINDS == set(handlers.registry())
    for name in ("base", "__init__", "handlers.job_match", "job_match.py", ""):
        assert handlers.get(name) is None


def test_english_text_is_detected_as_english() -> None:
    assert detect_language("Senior Python engineer", "Five years of Flask and Redis.") == "en"


def test_chinese_text_is_detected_as_chinese() -> None:
    assert detect_language("高级后端工程师", "五年 Python 开发经验，熟悉 Redis。") == "zh"


def test_mostly_english_text_with_a_few_chinese_words_is_english() -> None:
    text = "Backend engineer at Tencent (腾讯), built payment services in Python and Go."
    assert detect_language(text) == "en"


def test_text_without_letters_is_english() -> None:
    assert detect_language("12345 --- 678", "") == "en"


def test_a_match_result_rejects_a_score_above_100() -> None:
    with pytest.raises(ValidationError):
        MatchResult.model_validate({**MATCH, "score": 101})


def test_a_match_result_rejects_a_negative_score() -> None:
    with pytest.raises(ValidationError):
        MatchResult.model_validate({**MATCH, "score": -1})


def test_a_match_result_rejects_missing_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        MatchResult.model_validate({"score": 50})
    missing = {e["loc"][0] for e in caught.value.errors() if e["type"] == "missing"}
    assert missing == {"strengths", "gaps", "missing_keywords", "summary"}


def test_a_valid_match_result_is_accepted() -> None:
    assert MatchResult.model_validate(MATCH).score == 72


def test_a_customize_result_rejects_an_empty_resume_and_missing_changes() -> None:
    with pytest.raises(ValidationError) as caught:
        CustomizeResult.model_validate({"resume_markdown": ""})
    assert {e["loc"][0] for e in caught.value.errors()} == {"resume_markdown", "changes"}


def test_a_customize_result_rejects_a_change_without_a_reason() -> None:
    with pytest.raises(ValidationError):
        CustomizeResult.model_validate(
            {"resume_markdown": "# Jane", "changes": [{"section": "Skills", "change": "x"}]}
        )


def test_a_prep_result_rejects_an_empty_question_list() -> None:
    with pytest.raises(ValidationError):
        PrepResult.model_validate({"questions": [], "focus_areas": ["system design"]})


def test_a_prep_result_rejects_a_question_without_an_answer_outline() -> None:
    with pytest.raises(ValidationError):
        PrepResult.model_validate(
            {
                "questions": [{"question": "Why Go?", "why_asked": "gap"}],
                "focus_areas": [],
            }
        )


def prompts_of(kind: str) -> dict[str, tuple[str, str]]:
    module: Any = importlib.import_module(f"lib.handlers.{kind}")
    return module.PROMPTS


@pytest.mark.parametrize("kind", sorted(KINDS - PIPELINES))
def test_each_kind_has_english_and_chinese_prompts(kind: str) -> None:
    prompts = prompts_of(kind)
    assert set(prompts) == {"en", "zh"}
    for system, user in prompts.values():
        assert system.strip()
        assert user.strip()
    assert detect_language(prompts["zh"][0]) == "zh"
    assert detect_language(prompts["en"][0]) == "en"


@pytest.mark.parametrize("kind", sorted(KINDS - PIPELINES))
def test_each_user_template_takes_exactly_the_documented_fields(kind: str) -> None:
    for lang, (_, user) in prompts_of(kind).items():
        names = {name for _, name, _, _ in string.Formatter().parse(user) if name is not None}
        assert names == FIELDS[kind], lang
        values = {name: f"<{name} value>" for name in FIELDS[kind]}
        formatted = user.format(**values)
        for value in values.values():
            assert value in formatted


def test_user_templates_keep_braces_in_the_inputs_literal() -> None:
    _, user = prompts_of("job_match")["en"]
    formatted = user.format(resume_text="uses {curly} braces", job_description="{x}")
    assert "uses {curly} braces" in formatted


def test_parse_json_reads_a_plain_json_object() -> None:
    assert parse_json(' {"score": 1} ') == {"score": 1}


def test_parse_json_accepts_a_json_code_fence() -> None:
    assert parse_json('```json\n{"score": 90, "gaps": []}\n```') == {"score": 90, "gaps": []}


def test_parse_json_accepts_a_bare_code_fence() -> None:
    assert parse_json("```\n[1, 2]\n```\n") == [1, 2]


def test_parse_json_refuses_non_json_as_invalid_model_output() -> None:
    with pytest.raises(PermanentError) as caught:
        parse_json("Sure! Here is your analysis: the candidate is great.")
    assert caught.value.code == "invalid_model_output"


def test_parse_json_refuses_a_truncated_object() -> None:
    with pytest.raises(PermanentError) as caught:
        parse_json('```json\n{"score": 90, "gaps": [\n```')
    assert caught.value.code == "invalid_model_output"


def test_each_pipeline_step_is_a_registered_kind_and_its_result_holds_each_steps_result() -> None:
    for name in PIPELINES:
        handler = handlers.registry()[name]
        steps = [step.kind for step in handler.pipeline.steps]
        assert all(kind in KINDS - PIPELINES for kind in steps)
        # Every step's result by kind, then which step ended the pipeline early (if one did).
        assert list(handler.result_model.model_fields) == [*steps, "stopped_by"]
        assert handler.step_kind(0) == steps[0] and handler.step_kind(len(steps) - 1) == steps[-1]
