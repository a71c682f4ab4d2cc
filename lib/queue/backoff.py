"""QStash's default retry backoff, in one place for the worker's re-publishes and the dev broker.

https://upstash.com/docs/qstash/features/retry: "n = how many times this request has been
retried; delay = min(86400, e ** (2.5*n)) // in seconds" (12 s, 2 min 28 s, 30 min 8 s, ...).
"""

from __future__ import annotations

import math

# Each delay is capped at one day.
MAX_DELAY_SECONDS = 86400.0


def backoff_seconds(n: int) -> float:
    """QStash's default delay before the n-th retry (n >= 1): min(86400, e^(2.5 n)) seconds."""
    return min(MAX_DELAY_SECONDS, math.exp(min(2.5 * max(0, n), 50.0)))
