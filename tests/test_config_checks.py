"""lib/config_checks.py: what `lib.config.load` refuses, per role: the public dev values outside
development, the worker's signing keys and model specs, the QStash plan's limits, database
connections, the reconciler and the execution mode.
"""

from __future__ import annotations

import pytest
from fixtures import config_suite
from helpers.config import API, COMMON, WORKER, config_error, set_env

from lib.config import load
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY

clean_env = config_suite.clean_env  # autouse: no setting leaks in from the process


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
