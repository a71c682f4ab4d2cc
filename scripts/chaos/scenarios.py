"""`make chaos`'s scenarios: the settings every scenario's stack runs with (`BASE_ENV`, and per
execution mode `MODE_ENV`), and each scenario's fault schedule, time budget and own settings
(`SCENARIOS`). The faults themselves are in `faults`, `skew`, `reconcile` and `boxes`; running
them is `scripts.chaos.run`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from scripts.chaos.boxes import BOX_KILL_ENV, abandon_dead_box, kill_one_box
from scripts.chaos.faults import (
    Schedule,
    cut_redis,
    llm_markers,
    no_fault,
    pause_redis,
    postgres_outage,
    redis_outage,
    restart_postgres,
    sigkill_twice,
    sigterm_once,
)
from scripts.chaos.load import KINDS, PIPELINE_KINDS, Marker
from scripts.chaos.reconcile import RECONCILE_ENV, WORKERS_DOWN_ENV, broker_drops, workers_down
from scripts.chaos.skew import (
    Skew,
    redrive_dead_letters,
    skewed,
    skewed_and_killed,
    step_after_dead_letters,
    step_after_refusals,
)

# Admission and coins sized so that every submit is admitted; the rest is the production shape
# at a realistic pace (25 tokens/s: a job streams for 10-25 s).
BASE_ENV = {
    "OPENAI_API_KEY": "",
    "QSTASH_URL": "",
    "QSTASH_MODE": "broker",
    "APP_ENV": "development",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "INITIAL_COINS": "100",
    "QUEUE_MAX_PAID": "5000",
    "QUEUE_MAX_FREE": "1000",
    "USER_MAX_ACTIVE_PAID": "10",
    "USER_MAX_ACTIVE_FREE": "5",
    "FREE_DAILY_JOBS": "100",
    "LLM_MAX_CONCURRENCY_PAID": "500",
    "LLM_MAX_CONCURRENCY_FREE": "500",
    # Limits by contract: config and the dev broker enforce none of a plan's (lib/queue/plans.py).
    "QSTASH_PLAN": "enterprise",
    "OFFLINE_LLM_TOKENS_PER_SECOND": "25",
    "JOB_RETRIES": "8",
    "JOB_RETRY_DELAY": "1000 + 1000 * retried",
    "DEV_BROKER_TIME_SCALE": "1",
    "LEASE_TTL_SECONDS": "10",
    "WORKER_DRAIN_SECONDS": "3",
    "WEB_CONCURRENCY": "2",
    "GUNICORN_THREADS": "256",
}


# EXECUTION_MODE=detached (lib/detached.py): after its 200 nothing but the worker's own
# re-publish or the reconciler moves a job, so the reconciler's schedule ticks every 6 s (a
# `* * * * *` cron at DEV_BROKER_TIME_SCALE 0.1, unless a scenario scales time itself). The retry
# delay is ten times BASE_ENV's in QStash's time, so its retries are as far apart in real time as
# inline's: at 0.1 with BASE_ENV's delay, a job's 8 retries were spent in 3.6 s, less than a
# SIGKILLed worker may take to come back on a loaded machine (jobs failed, never started).
DETACHED_ENV = {
    "EXECUTION_MODE": "detached",
    "RECONCILE_CRON": "* * * * *",
    "DEV_BROKER_TIME_SCALE": "0.1",
    "JOB_RETRY_DELAY": "10000 + 10000 * retried",
}


# Each mode says its EXECUTION_MODE: detached is the default, inline must be asked for.
MODE_ENV = {"inline": {"EXECUTION_MODE": "inline"}, "detached": DETACHED_ENV}


MODES = tuple(MODE_ENV)


# The outage scenarios run on QStash's own retry policy: the production retry count, its default
# backoff (no JOB_RETRY_DELAY), and the worker's outage answers carrying no Retry-After. At this
# scale, 5 minutes of QStash time are 6 s and the backoff is 0.24 s, 3 s, 36 s.
OUTAGE_ENV = {"JOB_RETRIES": "3", "JOB_RETRY_DELAY": "", "DEV_BROKER_TIME_SCALE": "0.02"}


@dataclass
class Scenario:
    name: str
    title: str
    schedule: Schedule
    budget: float  # seconds from the stack's start to the end of the drain
    overrides: dict[str, str] = field(default_factory=dict)
    marker: Marker | None = None
    duplicates: bool = False
    proxy: bool = False
    max_attempts: int | None = None
    skew: Skew | None = None  # the worker runs under libfaketime
    after_drain: Schedule | None = None  # a step once every job ended (e.g. a DLQ redrive)
    # A step once every job ended, before the broker must be idle (retire a dead box).
    before_idle: Schedule | None = None
    kinds: tuple[str, ...] = KINDS  # the mix of kinds submitted


def _all_fail(index: int, rng: random.Random) -> tuple[str, str]:
    return "", "failed"


SCENARIOS = [
    Scenario("sigkill", "worker SIGKILLed twice", sigkill_twice, 130),
    Scenario("sigterm", "worker SIGTERM, then restart", sigterm_once, 110),
    # Pipelines (match_from_image: four steps, four messages each) among plain jobs, the worker
    # SIGKILLed twice mid-run: each step resumes where it stood, each job is charged once. A kill
    # between a step's end and the publish of the next step loses that message: the reconciler
    # re-publishes it, so it runs here as in broker-drop (its thresholds scaled down), with the
    # retries as far apart in real time as BASE_ENV's.
    Scenario(
        "pipeline",
        "pipelines among jobs, worker SIGKILLed twice",
        sigkill_twice,
        130,
        overrides={
            **RECONCILE_ENV,
            "JOB_RETRY_DELAY": "20000 + 20000 * retried",
            "OFFLINE_LLM_TOKENS_PER_SECOND": "60",
        },
        kinds=PIPELINE_KINDS,
    ),
    Scenario("redis-pause", "Redis SIGSTOP 5 s", pause_redis, 100),
    Scenario("redis-cut", "Redis connections cut (proxy)", cut_redis, 100, proxy=True),
    Scenario("pg-restart", "Postgres restarted mid-run", restart_postgres, 100),
    Scenario(
        "redis-outage",
        "Redis down 5 min of QStash time",
        redis_outage,
        150,
        overrides=OUTAGE_ENV,
        proxy=True,
    ),
    Scenario(
        "pg-outage",
        "Postgres down 5 min of QStash time",
        postgres_outage,
        150,
        overrides=OUTAGE_ENV,
    ),
    Scenario(
        "redeliver",
        "2-5 deliveries per message",
        no_fault,
        100,
        overrides={"JOB_RETRIES": "3"},  # the production default: busy answers use it up
        duplicates=True,
        max_attempts=1,
    ),
    Scenario(
        "llm-faults",
        "LLM 503 once, 500 always, hangs",
        no_fault,
        110,
        overrides={"LLM_READ_TIMEOUT_SECONDS": "3", "JOB_RETRIES": "3"},
        marker=llm_markers,
    ),
    # Clock skew: only the worker's clock moves (scripts/chaos/clock.py). A signature is valid
    # from its `nbf` (the broker's now) for 5 minutes, so a fast worker is within it at any
    # tolerance while a slow one needs QSTASH_CLOCK_TOLERANCE_SECONDS above its lag.
    Scenario(
        "skew-ahead",
        "worker clock +60 s (tolerance 30 s), SIGKILL once",
        skewed_and_killed,
        110,
        skew=Skew(60, ends_at=60, refused=False),
    ),
    Scenario(
        "skew-behind",
        "worker clock -60 s, tolerance 90 s",
        skewed,
        100,
        overrides={"QSTASH_CLOCK_TOLERANCE_SECONDS": "90"},
        skew=Skew(-60, ends_at=-60, refused=False),
        max_attempts=1,
    ),
    Scenario(
        "skew-refused",
        "worker clock -60 s > tolerance 30 s, then corrected",
        step_after_refusals,
        120,
        overrides={"JOB_RETRIES": "12"},  # the refusals must not use up the retries
        skew=Skew(-60, ends_at=0, refused=True),
        max_attempts=1,
    ),
    Scenario(
        "skew-dlq",
        "worker clock -60 s through every retry, then DLQ redrive",
        step_after_dead_letters,
        100,
        # The production retry count; the dev broker's backoff scaled so that the failure
        # callbacks' second retry (30 s instead of 148 s) comes after the correction.
        overrides={"JOB_RETRIES": "3", "DEV_BROKER_TIME_SCALE": "0.2"},
        skew=Skew(-60, ends_at=0, refused=True),
        marker=_all_fail,
        after_drain=redrive_dead_letters,
        max_attempts=0,
    ),
    # Healed by the reconciler alone (scripts/chaos/reconcile.py).
    Scenario("broker-drop", "broker loses 20 accepted messages", broker_drops, 110, RECONCILE_ENV),
    Scenario(
        "workers-down",
        "every worker down 10 min of QStash time",
        workers_down,
        150,
        WORKERS_DOWN_ENV,
    ),
    # Scale-out (scripts/chaos/boxes.py): the reconciler moves a dead box's jobs to the other.
    Scenario(
        "box-kill",
        "1 of 2 worker boxes SIGKILLed for good",
        kill_one_box,
        60,
        BOX_KILL_ENV,
        before_idle=abandon_dead_box,
    ),
]
