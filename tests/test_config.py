"""lib/config.py: one ConfigError listing every problem, environment over `.env` over defaults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.config import DEV_JWT_SECRET, Settings, load
from lib.errors import ConfigError
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

COMMON = {
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://127.0.0.1/cs",
    "WORKER_URL": "http://127.0.0.1:8080",
}
# The public dev values: accepted only with APP_ENV=development said explicitly (on loopback).
API = {
    **COMMON,
    "APP_ENV": "development",
    "SUPABASE_JWT_SECRET": DEV_JWT_SECRET,
    "QSTASH_TOKEN": DEV_TOKEN,
}
# A worker publishes its own retries and waits (EXECUTION_MODE=detached, the default).
WORKER = {
    **COMMON,
    "APP_ENV": "development",
    "QSTASH_TOKEN": DEV_TOKEN,
    "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
    "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No variable Settings reads leaks in from the process, and no `.env` but the test's own."""
    import os

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.upper().startswith("COST_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def config_error(role: str = "any", **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(role, **overrides)  # type: ignore[arg-type]
    return str(caught.value)


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


def test_the_api_refuses_direct_mode_and_the_dev_jwt_secret_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        {
            **API,
            "APP_ENV": "production",
            "QSTASH_MODE": "direct",
            "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
        },
    )
    message = config_error("api")
    assert "QSTASH_MODE=direct is for development only" in message
    assert (
        "SUPABASE_JWT_SECRET, QSTASH_TOKEN, QSTASH_CURRENT_SIGNING_KEY are public dev values, "
        "accepted only with APP_ENV=development (APP_ENV is production)"
    ) in message


def test_the_polling_sse_baseline_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production = {
        **API,
        "APP_ENV": "production",
        "SUPABASE_JWT_SECRET": "a-production-secret-of-forty-characters!",
    }
    set_env(monkeypatch, {**production, "SSE_READ_MODE": "poll"})
    assert "SSE_READ_MODE=poll is the benchmark baseline" in config_error("api")
    set_env(monkeypatch, {**production, "SSE_READ_MODE": "sometimes"})
    assert "SSE_READ_MODE" in config_error("api")


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


def test_the_api_accepts_direct_mode_and_the_dev_jwt_secret_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        {**API, "QSTASH_MODE": "direct", "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY},
    )
    settings = load("api")
    assert settings.qstash_mode == "direct"
    assert not settings.is_production


def test_the_api_in_production_loads_with_a_real_secret_and_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        {
            **API,
            "APP_ENV": "production",
            "SUPABASE_JWT_SECRET": "a-production-secret-of-forty-characters!",
            "STREAM_TOKEN_SECRET": "another-production-secret-of-40-chars!!",
            "QSTASH_TOKEN": "a-real-qstash-token",
        },
    )
    assert load("api").is_production


def test_the_worker_requires_signing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, COMMON)
    assert "QSTASH_CURRENT_SIGNING_KEY" in config_error("worker")


def test_the_worker_loads_with_both_signing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, WORKER)
    settings = load("worker")
    assert settings.signing_keys == [DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY]


def test_the_worker_reports_malformed_model_specs_and_unknown_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch, {**WORKER, "LLM_MODEL_FREE": "gpt-4o-mini", "LLM_MODEL_PAID": "acme:big-model"}
    )
    message = config_error("worker")
    assert "'gpt-4o-mini' must look like 'provider:model'" in message
    assert "unknown provider 'acme'" in message


# QStash plan and database connections ----------------------------------------------------------


def test_the_default_plan_is_pay_as_you_go_and_the_default_job_timeout_fits_the_free_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load()
    assert settings.qstash_plan == "payg"
    assert settings.job_timeout_seconds == 600
    free = {"QSTASH_PLAN": "free", "LLM_MAX_CONCURRENCY_PAID": "10"}
    set_env(monkeypatch, {**API, **WORKER, **free})
    assert load("api").job_timeout_seconds < 15 * 60
    assert load("worker").qstash_plan == "free"


def test_every_setting_the_plan_cannot_honour_is_listed_in_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = {
        # Inline, a delivery holds one of the plan's parallel slots for the whole job.
        "EXECUTION_MODE": "inline",
        "QSTASH_PLAN": "free",
        "JOB_TIMEOUT_SECONDS": "900",
        "JOB_RETRIES": "4",
        "LLM_MAX_CONCURRENCY_FREE": "11",
    }
    set_env(monkeypatch, {**API, **WORKER, **plan})
    for role in ("api", "worker"):
        message = config_error(role)
        assert "JOB_RETRIES=4 is over the QStash free plan's maximum of 3 retries" in message
        assert "JOB_TIMEOUT_SECONDS=900 must stay under" in message
        assert "LLM_MAX_CONCURRENCY_FREE=11 is over the QStash free plan's parallelism" in message
        assert "LLM_MAX_CONCURRENCY_PAID=32 is over" in message
        assert message.count("\n  - ") == 4


@pytest.mark.parametrize(
    ("plan", "accepted", "refused"),
    [
        ("payg", {"JOB_RETRIES": "5", "JOB_TIMEOUT_SECONDS": "7199"}, {"JOB_RETRIES": "6"}),
        ("payg", {"LLM_MAX_CONCURRENCY_PAID": "100"}, {"JOB_TIMEOUT_SECONDS": "7200"}),
        (
            "fixed-1m",
            {"JOB_RETRIES": "20", "LLM_MAX_CONCURRENCY_PAID": "200"},
            {"JOB_RETRIES": "21"},
        ),
        ("fixed-10m", {"LLM_MAX_CONCURRENCY_PAID": "1000"}, {"LLM_MAX_CONCURRENCY_FREE": "1001"}),
        ("enterprise", {"JOB_RETRIES": "100", "LLM_MAX_CONCURRENCY_PAID": "5000"}, {}),
    ],
)
def test_each_plan_accepts_up_to_its_documented_limits(
    monkeypatch: pytest.MonkeyPatch, plan: str, accepted: dict[str, str], refused: dict[str, str]
) -> None:
    set_env(monkeypatch, {**API, "EXECUTION_MODE": "inline", "QSTASH_PLAN": plan, **accepted})
    assert load("api").qstash_plan == plan
    if refused:
        set_env(monkeypatch, refused)
        assert f"QStash {plan} plan" in config_error("api")


def test_an_unknown_plan_is_a_config_error_naming_qstash_plan() -> None:
    assert "QSTASH_PLAN" in config_error(qstash_plan="hobby")


def test_the_worker_splits_db_max_connections_over_its_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lib.store import worker_pool_size

    set_env(monkeypatch, WORKER)
    assert load("worker").db_max_connections == 6
    assert worker_pool_size(load("worker")) == 3
    assert worker_pool_size(load("worker", web_concurrency=4, db_max_connections=10)) == 2
    message = config_error("worker", web_concurrency=4, db_max_connections=3)
    assert "DB_MAX_CONNECTIONS=3 gives each of the WEB_CONCURRENCY=4" in message


def test_a_producer_serving_the_reconciler_needs_signing_keys_and_refuses_the_dev_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, {**API, "PRODUCER_URL": "https://producer.example.test"})
    assert "PRODUCER_URL serves the reconciler" in config_error("api")

    set_env(
        monkeypatch,
        {
            "APP_ENV": "production",
            "STREAM_TOKEN_SECRET": "s" * 40,
            "QSTASH_TOKEN": "a-real-token",
            "SUPABASE_JWT_SECRET": "j" * 40,
            "QSTASH_CURRENT_SIGNING_KEY": DEV_CURRENT_SIGNING_KEY,
            "QSTASH_NEXT_SIGNING_KEY": DEV_NEXT_SIGNING_KEY,
        },
    )
    assert "QSTASH_CURRENT_SIGNING_KEY, QSTASH_NEXT_SIGNING_KEY are public dev values" in (
        config_error("api")
    )


def test_the_reconcile_url_is_the_producer_url_plus_the_endpoint() -> None:
    assert load(producer_url="https://p.example.test/").reconcile_url == (
        "https://p.example.test/api/reconcile"
    )
    assert load().reconcile_url == ""


def test_the_execution_mode_is_detached_unless_set_and_refuses_other_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, WORKER)
    assert load("worker").execution_mode == "detached"
    assert load("worker", execution_mode="inline").execution_mode == "inline"
    assert "EXECUTION_MODE" in config_error("worker", execution_mode="background")


def test_a_detached_worker_needs_the_qstash_token_to_publish_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, WORKER)
    # Detached is the default: a worker without the token is refused unless it runs inline.
    assert "QSTASH_TOKEN on the worker" in config_error("worker", qstash_token="")
    assert load("worker", qstash_token="", execution_mode="inline").qstash_token == ""
    # The dev broker of QSTASH_MODE=direct takes no token.
    assert load("worker", qstash_token="", qstash_mode="direct").execution_mode == "detached"
    settings = load("worker")
    # WORKER_MAX_JOBS unset: 500 background jobs per worker process, the box's all together.
    assert (settings.execution_mode, settings.max_jobs_per_process) == ("detached", 500)
    assert settings.max_jobs == 500 * settings.web_concurrency
    assert load("worker", worker_max_jobs=7).max_jobs == 7


def test_a_detached_worker_may_run_more_model_calls_than_the_plans_parallelism(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, {**WORKER, "QSTASH_PLAN": "free", "LLM_MAX_CONCURRENCY_FREE": "200"})
    # Inline, said explicitly, each model call holds a delivery: the plan's parallelism bounds it.
    assert "LLM_MAX_CONCURRENCY_FREE=200" in config_error("worker", execution_mode="inline")
    settings = load("worker")
    assert (settings.execution_mode, settings.llm_max_concurrency_free) == ("detached", 200)
