"""The load test (scripts/bench/loadtest.py): 1,000 submits from 100 concurrent users against a
local stack with the SPEC's limits, then every accepted job drained and the accounts checked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from scripts.bench import loadtest
from scripts.stack.devstack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SUBMITS, CLIENTS = 1000, 100


@pytest.fixture(scope="module")
def stack(local_stack: Callable[..., AbstractContextManager[Stack]]) -> Iterator[Stack]:
    with local_stack("load", **loadtest.local_overrides()) as running:
        yield running


@pytest.fixture(scope="module")
def report(stack: Stack) -> loadtest.Report:
    result = loadtest.run(
        stack.producer_url,
        submits=SUBMITS,
        clients=CLIENTS,
        users=CLIENTS,
        initial_coins=int(stack.env["INITIAL_COINS"]),
        free_daily_jobs=int(stack.env["FREE_DAILY_JOBS"]),
        drain_timeout=150,
        live_counts=loadtest.redis_live_counts(stack.env["REDIS_URL"], stack.env["REDIS_PREFIX"]),
    )
    print("\n" + result.summary())
    return result


def test_the_stack_runs_with_the_spec_limits(stack: Stack) -> None:
    for name, value in loadtest.SPEC_LIMITS.items():
        assert stack.env[name] == value, name


def test_a_thousand_submits_get_no_5xx_and_only_expected_refusals(
    report: loadtest.Report,
) -> None:
    assert len(report.submits) == SUBMITS
    statuses = Counter(s.status for s in report.submits)
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 202, 402, 429}, statuses
    for submit in report.submits:
        assert loadtest.check_answer(submit) is None, submit
    # The load is real: the tier and user limits and the quota were all hit.
    codes = Counter(s.code for s in report.submits)
    assert statuses[202] >= 100 and codes["user_concurrency"] and codes["quota_exhausted"], codes
    assert statuses[200], "no Idempotency-Key repeat was answered with the first job"


def test_every_accepted_job_finishes_and_the_admission_counters_return_to_zero(
    report: loadtest.Report,
) -> None:
    accepted = {s.job["id"] for s in report.submits if s.job is not None}
    assert accepted <= set(report.final)
    unfinished = [j for j in accepted if report.final[j]["status"] not in loadtest.TERMINAL]
    assert not unfinished, f"{len(unfinished)} jobs not terminal"
    assert report.live == {"free": 0, "paid": 0}


def test_every_users_coins_are_the_grant_minus_their_succeeded_paid_jobs(
    report: loadtest.Report,
) -> None:
    assert len(report.me) == CLIENTS
    charged = [j for j in report.final.values() if j["tier"] == "paid"]
    assert charged, "no paid job ran"
    assert report.violations == []
