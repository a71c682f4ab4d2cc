"""lib/queue/backoff.py: QStash's retry delays, as documented
(https://upstash.com/docs/qstash/features/retry), for the detached worker and the dev broker."""

from __future__ import annotations

import pytest

from lib.queue.backoff import RetryDelayError, backoff_seconds, retry_delay


@pytest.mark.parametrize(
    ("n", "seconds"),
    [(1, 12), (2, 2 * 60 + 28), (3, 30 * 60 + 8), (4, 6 * 3600 + 7 * 60 + 6), (5, 86400)],
)
def test_the_default_backoff_is_the_documented_table(n: int, seconds: int) -> None:
    assert int(backoff_seconds(n)) == seconds


def test_the_backoff_is_capped_at_one_day_even_for_huge_retry_counts() -> None:
    assert backoff_seconds(10_000) == 86400


def test_a_retry_after_replaces_the_expression_and_the_backoff() -> None:
    assert retry_delay("1000 * (1 + retried)", 3, asked=7) == 7


def test_an_expression_replaces_the_backoff_with_retried_counted_from_zero() -> None:
    assert retry_delay("1000 * (1 + retried)", 1) == 1.0
    assert retry_delay("1000 * (1 + retried)", 3) == 3.0


def test_without_an_expression_the_nth_attempt_waits_the_nth_backoff() -> None:
    assert retry_delay("", 2) == backoff_seconds(2)


def test_an_expression_qstash_would_refuse_is_refused() -> None:
    with pytest.raises(RetryDelayError):
        retry_delay("__import__('os')", 1)
