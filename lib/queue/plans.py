"""QStash plans and the limits each one documents; what the producer, config and dev broker obey.

Sources (checked 2026-12-04):
- Parallelism (deliveries in flight across the whole account) and the maximum HTTP response
  duration: the plan data behind https://upstash.com/pricing/qstash (upstash/upstash-web,
  `src/data/pricing/qstash.ts`: `maxParallelism` 10 / 100 / 200 / 1000 and
  `maxHttpResponseDuration` 15 minutes / 2 hours / 6 hours / 12 hours).
- The retry maximum: "Max Retry Count" 3 / 5 / 20 / 100 on the same page (upstash/upstash-web,
  `src/components/pricing/qstash/compare-table.tsx` at 781775c), also quoted for pay-as-you-go
  in upstash/docs#477; https://upstash.com/docs/qstash/sdks/py/examples/publish says "the max
  number of retries is based on your QStash plan".
- Enterprise limits are set per contract, so nothing is assumed or enforced for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PlanName = Literal["free", "payg", "fixed-1m", "fixed-10m", "enterprise"]
DEFAULT_PLAN: PlanName = "payg"
# A failure callback is the only message that makes a job terminal and refunds it, so it gets at
# least this many retries (QStash's default backoff over 5 retries spans about 30 hours), even
# when JOB_RETRIES is lower; never more than the plan allows.
FAILURE_CALLBACK_MIN_RETRIES = 5


@dataclass(frozen=True)
class Plan:
    """One plan's limits; None means the plan sets no published limit (enterprise)."""

    name: str
    parallelism: int | None
    max_retries: int | None
    max_response_seconds: float | None


PLANS: dict[str, Plan] = {
    "free": Plan("free", parallelism=10, max_retries=3, max_response_seconds=15 * 60),
    "payg": Plan("payg", parallelism=100, max_retries=5, max_response_seconds=2 * 3600),
    "fixed-1m": Plan("fixed-1m", parallelism=200, max_retries=20, max_response_seconds=6 * 3600),
    "fixed-10m": Plan(
        "fixed-10m", parallelism=1000, max_retries=100, max_response_seconds=12 * 3600
    ),
    "enterprise": Plan("enterprise", parallelism=None, max_retries=None, max_response_seconds=None),
}


def plan(name: str) -> Plan:
    """The plan called `name`. Raises ValueError for an unknown name."""
    try:
        return PLANS[name]
    except KeyError:
        raise ValueError(f"unknown QStash plan {name!r}; use one of {', '.join(PLANS)}") from None


def failure_callback_retries(plan_name: str, job_retries: int) -> int:
    """How many retries the producer gives a job's failure callback on `plan_name`.

    At least `job_retries` and FAILURE_CALLBACK_MIN_RETRIES, capped at the plan's maximum, so
    one deferred or failed call of /v1/failed never loses the refund.
    """
    wanted = max(job_retries, FAILURE_CALLBACK_MIN_RETRIES)
    cap = plan(plan_name).max_retries
    return wanted if cap is None else min(wanted, cap)


def problems(
    plan_name: str,
    *,
    job_retries: int,
    job_timeout_seconds: float,
    concurrency: dict[str, int],
) -> list[str]:
    """Every setting that `plan_name` cannot honour, one readable line each.

    `concurrency` maps a setting's name to the flow-control parallelism it asks for.
    """
    limits = plan(plan_name)
    found = []
    if limits.max_retries is not None and job_retries > limits.max_retries:
        found.append(
            f"JOB_RETRIES={job_retries} is over the QStash {limits.name} plan's maximum of "
            f"{limits.max_retries} retries"
        )
    if limits.max_response_seconds is not None and (
        job_timeout_seconds >= limits.max_response_seconds
    ):
        found.append(
            f"JOB_TIMEOUT_SECONDS={job_timeout_seconds:g} must stay under the QStash "
            f"{limits.name} plan's response limit of {limits.max_response_seconds:g} s"
        )
    for name, value in concurrency.items():
        if limits.parallelism is not None and value > limits.parallelism:
            found.append(
                f"{name}={value} is over the QStash {limits.name} plan's parallelism of "
                f"{limits.parallelism}"
            )
    return found
