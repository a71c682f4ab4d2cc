"""lib/config.py: one ConfigError listing every problem, environment over `.env` over defaults;
model and cost overrides. What each role refuses (lib/config_checks.py) is test_config_checks.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import config_suite
from helpers.config import API, config_error, set_env

from lib.config import load

clean_env = config_suite.clean_env  # autouse: no setting leaks in from the process


def test_an_empty_api_configuration_lists_every_missing_setting_in_one_error() -> None:
    message = config_error("api")
    for name in (
        "REDIS_URL",
        "DATABASE_URL",
        "WORKER_URL",
        "SUPABASE_JWT_SECRET",
        "QSTASH_TOKEN",
        "STREAM_TOKEN_SECRET",
    ):
        assert name in message
    assert message.count("\n  - ") >= 5


def test_a_complete_api_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, API)
    settings = load("api")
    assert settings.redis_url == API["REDIS_URL"]
    assert settings.execute_url == "http://127.0.0.1:8080/v1/execute"


def test_type_errors_are_reported_together_by_variable_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch, {**API, "QUEUE_MAX_FREE": "abc", "JOB_RETRIES": "-1", "APP_ENV": "staging"}
    )
    message = config_error("api")
    assert "QUEUE_MAX_FREE" in message
    assert "JOB_RETRIES" in message
    assert "APP_ENV" in message


def test_a_type_error_and_a_missing_setting_are_reported_in_the_same_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_MAX_FREE", "abc")
    message = config_error("api")
    assert "QUEUE_MAX_FREE" in message
    assert "REDIS_URL" in message


def test_the_role_any_needs_no_settings_and_gives_the_defaults() -> None:
    settings = load()
    assert settings.queue_max_free == 20
    assert settings.redis_prefix == "cs:"
    assert settings.allowed_origins == []


def test_a_dotenv_file_in_the_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text("QUEUE_MAX_FREE=7\nREDIS_PREFIX=app2:\n")
    settings = load()
    assert settings.queue_max_free == 7
    assert settings.redis_prefix == "app2:"


def test_the_environment_beats_the_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text("QUEUE_MAX_FREE=7\n")
    monkeypatch.setenv("QUEUE_MAX_FREE", "9")
    assert load().queue_max_free == 9


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_MAX_FREE", "9")
    assert load(queue_max_free=3).queue_max_free == 3


def test_allowed_origins_given_as_a_json_list_in_the_environment_is_a_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", '["https://a.example", "https://b.example"]')
    assert load().allowed_origins == ["https://a.example", "https://b.example"]


def test_allowed_origins_given_as_a_comma_separated_string_is_split_and_trimmed() -> None:
    settings = load(allowed_origins=" https://a.example, https://b.example ,,")
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]


def test_allowed_origins_comma_separated_in_the_environment_is_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://a.example, https://b.example")
    assert load().allowed_origins == ["https://a.example", "https://b.example"]


def test_model_for_uses_the_tier_default_without_an_override() -> None:
    settings = load(llm_model_free="deepseek:deepseek-chat", llm_model_paid="openai:gpt-4o")
    assert settings.model_for("free", "job_match") == "deepseek:deepseek-chat"
    assert settings.model_for("paid", "job_match") == "openai:gpt-4o"


def test_model_for_prefers_the_tier_and_kind_override_from_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overrides = {"paid.interview_prep": "glm:glm-4-plus", "free.job_match": "deepseek:chat"}
    monkeypatch.setenv("LLM_MODEL_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("LLM_MODEL_PAID", "openai:gpt-4o")
    settings = load()
    assert settings.model_for("paid", "interview_prep") == "glm:glm-4-plus"
    assert settings.model_for("free", "job_match") == "deepseek:chat"
    assert settings.model_for("paid", "job_match") == "openai:gpt-4o"


def test_malformed_json_in_llm_model_overrides_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_MODEL_OVERRIDES", "paid.job_match=openai:gpt-4o")
    assert "LLM_MODEL_OVERRIDES" in config_error()


def test_malformed_json_and_a_missing_setting_are_reported_in_the_same_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_MODEL_OVERRIDES", "paid.job_match=openai:gpt-4o")
    message = config_error("api")
    assert "LLM_MODEL_OVERRIDES" in message
    assert "REDIS_URL" in message


def test_cost_is_the_handler_default_without_an_override() -> None:
    assert load().cost("job_match", 1) == 1


def test_cost_reads_cost_kind_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COST_RESUME_CUSTOMIZE", "5")
    settings = load()
    assert settings.cost("resume_customize", 2) == 5
    assert settings.cost("interview_prep", 2) == 2


def test_cost_reads_cost_kind_from_dotenv_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text("COST_JOB_MATCH=4\nCOST_INTERVIEW_PREP=6\n")
    monkeypatch.setenv("COST_INTERVIEW_PREP", "8")
    settings = load()
    assert settings.cost("job_match", 1) == 4
    assert settings.cost("interview_prep", 2) == 8


def test_cost_is_read_once_at_load_not_on_every_call(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text("COST_JOB_MATCH=4\n")
    settings = load()
    assert settings.cost("job_match", 1) == 4
    (clean_env / ".env").write_text("COST_JOB_MATCH=9\n")
    monkeypatch.setenv("COST_JOB_MATCH", "7")
    assert settings.cost("job_match", 1) == 4


def test_a_non_integer_or_negative_cost_is_reported_by_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COST_JOB_MATCH", "abc")
    monkeypatch.setenv("COST_INTERVIEW_PREP", "-2")
    message = config_error()
    assert "COST_JOB_MATCH" in message
    assert "COST_INTERVIEW_PREP" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", "always"), ("false", "never"), ("auto", "auto"), ("ALWAYS", "always")],
)
def test_events_publish_takes_auto_or_a_boolean(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    set_env(monkeypatch, {"EVENTS_PUBLISH": value})
    assert load().events_publish == expected


def test_an_unknown_events_publish_value_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, {"EVENTS_PUBLISH": "sometimes"})
    assert "EVENTS_PUBLISH" in config_error()
