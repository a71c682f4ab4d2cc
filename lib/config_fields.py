"""The configuration's variables and where their values come from: `SettingsFields` declares
every setting's name, type, default and decoding, and `environment()` reads the environment, then
`.env`. This module is the only place that reads the environment; lib/config.py says what the
settings mean together and loads them."""

from __future__ import annotations

import os
from typing import Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lib.queue import plans


class SettingsFields(BaseModel):
    """The fields of `Settings`, grouped by concern, with the decoders of those that are not
    plain scalars."""

    model_config = ConfigDict(extra="ignore")

    # Production unless set: the public dev secrets and keys need APP_ENV=development, said
    # explicitly, on a process that serves on loopback only (HOST), and never on Vercel.
    app_env: Literal["development", "production", "test"] = "production"
    # Set to 1 by Vercel in its functions: the public dev values are refused there regardless.
    vercel: str = ""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Redis: Upstash REST, or a redis:// / rediss:// URL.
    redis_url: str = ""
    upstash_redis_rest_url: str = ""
    upstash_redis_rest_token: str = ""
    redis_prefix: str = "cs:"

    # Database: supabase-py over PostgREST, or a direct Postgres connection.
    database_url: str = ""
    supabase_url: str = ""
    supabase_service_role_key: str = ""
    supabase_jwt_secret: str = ""
    supabase_jwks_url: str = ""
    store_backend: Literal["auto", "postgres", "supabase"] = "auto"
    # Postgres clients of one worker instance, all its gunicorn processes together. Two replicas
    # (WORKER_REPLICAS' default) hold 12, within Supabase's smallest session pooler (15 clients).
    db_max_connections: int = Field(6, ge=1)

    # Stream tokens (scoped to one job) are HS256 JWTs signed with this secret, short-lived: they
    # travel in URLs. Required (and distinct from SUPABASE_JWT_SECRET) outside development.
    stream_token_secret: str = ""
    stream_token_ttl_seconds: int = Field(600, ge=60, le=3600)

    # QStash.
    qstash_url: str = "https://qstash.upstash.io"
    qstash_token: str = ""
    qstash_current_signing_key: str = ""
    qstash_next_signing_key: str = ""
    qstash_mode: Literal["broker", "direct"] = "broker"
    qstash_clock_tolerance_seconds: int = Field(30, ge=0, le=600)
    # The QStash plan (lib/queue/plans.py): its parallelism, retry maximum and response-time
    # limit bound JOB_RETRIES, JOB_TIMEOUT_SECONDS and LLM_MAX_CONCURRENCY_* (`plan_problems`).
    qstash_plan: plans.PlanName = plans.DEFAULT_PLAN
    worker_url: str = ""
    # Scale-out (lib/boxes.py): the worker boxes the producer publishes to, comma-separated base
    # URLs (empty: WORKER_URL alone). Each box announces its free capacity (WORKER_MAX_JOBS minus
    # the jobs it runs) in Redis every BOX_HEARTBEAT_SECONDS when several boxes are listed; an
    # announcement lapses after 3 beats.
    worker_urls: list[str] = Field(default_factory=list)
    # The jobs one box runs at once, all its processes together (`max_jobs`); 0: inline
    # WEB_CONCURRENCY x GUNICORN_THREADS, detached WEB_CONCURRENCY x 500 (background jobs).
    worker_max_jobs: int = Field(0, ge=0)
    box_heartbeat_seconds: float = Field(5.0, gt=0, le=60)
    job_retries: int = Field(3, ge=0, le=100)
    # QStash `Upstash-Retry-Delay` expression in ms (e.g. "1000 * (1 + retried)"); empty keeps
    # QStash's default exponential backoff.
    job_retry_delay: str = ""
    # Jobs run up to 7 min; the free plan cuts a delivery at 15 min.
    job_timeout_seconds: int = Field(600, ge=10)

    # Admission and quotas (SPEC "Limits, fairness, coins").
    queue_max_free: int = Field(20, ge=0)
    queue_max_paid: int = Field(100, ge=0)
    user_max_active_free: int = Field(1, ge=0)
    user_max_active_paid: int = Field(3, ge=0)
    free_daily_jobs: int = Field(3, ge=0)
    # Supabase anonymous users (is_anonymous, or a role other than authenticated) get no coins
    # and no free jobs unless this is true.
    allow_anonymous_users: bool = False
    initial_coins: int = Field(5, ge=0)
    # A failure or cancel after more than this share (%) of the kind's typical output was
    # delivered refunds nothing (SPEC "Delivered output is paid for").
    refund_max_delivered_pct: int = Field(25, ge=0, le=100)
    admission_ttl_seconds: int = Field(1800, ge=5)
    retry_after_seconds: int = Field(5, ge=1)

    # Execution.
    lease_ttl_seconds: int = Field(60, ge=1)
    events_ttl_seconds: int = Field(172800, ge=86400)
    # PUBLISH after each emit, for SSE readers that wait by subscription (Upstash REST): "auto"
    # publishes only while such a reader watches the job; true/false force it on or off.
    events_publish: Literal["auto", "always", "never"] = "auto"
    # Delta batching (docs/performance.md): the first piece at once, then every DELTA_FLUSH_MS
    # (or DELTA_FLUSH_CHARS, or DELTA_FLUSH_TOKENS pieces when > 0) while someone watches the
    # stream; every DELTA_FLUSH_IDLE_MS while nobody does (0: hold the text until a viewer
    # comes or the attempt ends).
    delta_flush_ms: int = Field(150, ge=0)
    delta_flush_idle_ms: int = Field(0, ge=0)
    delta_flush_chars: int = Field(600, ge=1)
    delta_flush_tokens: int = Field(0, ge=0)
    worker_drain_seconds: float = Field(20.0, ge=0)
    # How a delivery runs (docs/operations.md "Execution mode"): "detached" (the default) answers
    # 200 once the job is durably started (lease taken, job running) and runs it in a bounded
    # pool (WORKER_MAX_JOBS shared by the box's worker processes: `max_jobs_per_process`),
    # retries and model waits being QStash messages the worker publishes (lib/detached.py), so
    # the worker needs QSTASH_TOKEN too; "inline" holds QStash's request for the whole job.
    # Detached became the default once `make chaos` (every scenario, 0 violations in both modes)
    # and `make bench` (240 live jobs on the free plan against inline's 10, 1.0 message per
    # job) showed it at least as safe (issue 12).
    execution_mode: Literal["inline", "detached"] = "detached"
    # Detached mode: a job whose model is full waits, re-published after this long (s) unless a
    # freed slot wakes it first; waiters not seen again for DETACHED_WAIT_TTL_SECONDS leave.
    detached_wait_seconds: float = Field(30.0, gt=0)
    # Jobs whose submit died between insert and publish are failed and refunded after this long.
    sweep_after_seconds: int = Field(900, ge=60)
    sweep_interval_seconds: float = Field(60.0, ge=0)
    # The reconciler (lib/reconcile.py): a QStash schedule on RECONCILE_CRON calls the
    # producer's signed POST PRODUCER_URL/api/reconcile. A job queued at the broker and never
    # started for RECONCILE_QUEUED_AFTER_SECONDS, or running without a lease for
    # LEASE_TTL_SECONDS, is re-published (at most RECONCILE_MAX_HEALS times, then failed and
    # refunded); at most RECONCILE_BATCH jobs and admissions per tier are looked at per run.
    producer_url: str = ""
    reconcile_cron: str = "* * * * *"
    reconcile_queued_after_seconds: int = Field(300, ge=1)
    reconcile_max_heals: int = Field(5, ge=1)
    reconcile_batch: int = Field(50, ge=1, le=1000)
    llm_connect_timeout_seconds: float = Field(10.0, gt=0)
    llm_read_timeout_seconds: float = Field(60.0, gt=0)
    llm_max_concurrency_free: int = Field(8, ge=1)
    llm_max_concurrency_paid: int = Field(32, ge=1)

    # LLM providers. Model specs are "provider:model"; overrides are keyed "tier.kind".
    openai_api_key: str = ""
    openai_base_url: str = ""
    deepseek_api_key: str = ""
    deepseek_base_url: str = ""
    glm_api_key: str = ""
    glm_base_url: str = ""
    llm_model_free: str = "openai:gpt-4o-mini"
    llm_model_paid: str = "openai:gpt-4o"
    llm_model_overrides: dict[str, str] = Field(default_factory=dict)
    # The kinds that read an image (lib.models.VISION_KINDS) run on a vision-capable model.
    llm_vision_model_free: str = "openai:gpt-4o-mini"
    llm_vision_model_paid: str = "openai:gpt-4o"

    # Image input (lib/images.py): uploaded straight to Supabase Storage through a signed
    # upload URL (POST /api/uploads), never through a function body (Vercel caps it at 4.5 MB).
    # STORAGE_URL is the Storage API's base, `$SUPABASE_URL/storage/v1` unless set; its calls
    # carry SUPABASE_SERVICE_ROLE_KEY. The bucket's own file size limit and allowed MIME types
    # should match IMAGE_MAX_BYTES and PNG/JPEG/WebP (docs/deploy.md).
    storage_url: str = ""
    storage_bucket: str = Field("job-images", pattern=r"^[a-z0-9][a-z0-9_.-]{1,62}$")
    image_max_bytes: int = Field(5 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    # Signed upload URLs one user may get per hour (POST /api/uploads); past it, 429
    # rate_limited: each URL lets its holder store up to IMAGE_MAX_BYTES in the bucket.
    uploads_per_hour: int = Field(30, ge=1, le=10_000)
    # How long an image outlives the last job that names it (hours; 0: deleted at the next
    # reconciler run after the job ends). A day lets the user look at what they sent and
    # resubmit it after a failure; the images are screenshots of resumes and postings, so not
    # longer by default (docs/security.md). Uploads no job names go UPLOAD_ORPHAN_SECONDS after
    # their URL was handed out (lib/retention.py).
    image_retention_hours: int = Field(24, ge=0, le=24 * 365)

    # Worker process model (worker/gunicorn.conf.py). HOST empty binds loopback in development
    # and every interface otherwise (the Docker image).
    host: str = ""
    port: int = Field(8080, ge=1, le=65535)
    web_concurrency: int = Field(2, ge=1)
    gunicorn_threads: int = Field(64, ge=1)
    # gevent carried 450 live jobs on 2 cores where gthread broke down at 150 (docs/performance.md).
    gunicorn_worker_class: str = "gevent"
    prometheus_multiproc_dir: str = ""

    # Observability. /metrics reads the producer's admission refusals from Redis at most this
    # often (s) per process; 0 reads on every scrape. OpenTelemetry traces are off unless
    # OTEL_ENABLED or OTEL_EXPORTER_OTLP_ENDPOINT is set (and the `otel` extra is installed).
    metrics_redis_refresh_seconds: float = Field(30.0, ge=0)
    otel_enabled: bool = False
    otel_exporter_otlp_endpoint: str = ""
    otel_service_name: str = "careershaper-worker"

    # HTTP.
    allowed_origins: list[str] = Field(default_factory=list)
    sse_max_seconds: float = Field(280.0, gt=0)
    sse_heartbeat_seconds: float = Field(15.0, gt=0, le=15)
    # Open event streams per user, of both endpoints; past it, 429 stream_limit.
    sse_max_streams_per_user: int = Field(4, ge=1)
    # How long one producer instance answers the public `/api/health?deep=1` with its last check
    # (each check is a request to Redis, the database and Storage); 0 checks on every call.
    health_cache_seconds: float = Field(10.0, ge=0, le=300)
    # "block": wait for events with a blocking read or a subscription (the SPEC's way). "poll":
    # the original design, XRANGE every 400 ms backing off to 8 s, kept only as the baseline of
    # `make bench`; refused in production.
    sse_read_mode: Literal["block", "poll"] = "block"
    max_body_bytes: int = Field(256 * 1024, ge=1024)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                import json

                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("worker_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("events_publish", mode="before")
    @classmethod
    def _publish_words(cls, value: object) -> object:
        if isinstance(value, bool):
            return "always" if value else "never"
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("true", "1", "yes", "on"):
                return "always"
            if word in ("false", "0", "no", "off"):
                return "never"
            return word
        return value

    @field_validator("llm_model_overrides", mode="before")
    @classmethod
    def _decode_overrides(cls, value: object) -> object:
        # Bad JSON is a validation error, listed with every other problem.
        if isinstance(value, str):
            import json

            return json.loads(value) if value.strip() else {}
        return value


def environment() -> dict[str, str]:
    """Every variable of the environment and of `.env` in the working directory (the
    environment wins), names lower-cased."""
    values = {k.lower(): v for k, v in dotenv_values(".env").items() if v is not None}
    values.update({k.lower(): v for k, v in os.environ.items()})
    return values


def extra_env() -> dict[str, str]:
    """`environment()` with names upper-cased: for the settings a field cannot name
    (`COST_<KIND>`)."""
    return {k.upper(): v for k, v in environment().items()}
