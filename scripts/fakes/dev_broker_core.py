"""The dev broker's engine: scheduling, signed delivery, retries, DLQ, callbacks, flow control.

It knows nothing of HTTP requests to itself: `scripts.fakes.dev_broker` parses the QStash REST
API into `Message`s and serialises the answers; `scripts.fakes.dev_broker_model` holds the
formats and rules. This module schedules and admits messages (flow control, the plan's
parallelism); `scripts.fakes.dev_broker_delivery` sends each attempt and settles its outcome.

Threads: one scheduler thread, plus one daemon thread per in-flight delivery attempt, because a
delivery to the worker is held open for the whole job (minutes) and hundreds may be open at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib.queue.plans import DEFAULT_PLAN, Plan, plan
from scripts.fakes.dev_broker_delivery import Deliveries, http_attempt
from scripts.fakes.dev_broker_model import Message, Outcome, message_json, safe_url

log = logging.getLogger("dev_broker")

DEDUP_WINDOW_SECONDS = 600.0
# Finished messages stay readable through GET /v2/messages for as long as a duplicate is refused.
RETENTION_SECONDS = DEDUP_WINDOW_SECONDS

STAT_NAMES = (
    "published",
    "deduplicated",
    "deliveries",
    "delivered",
    "retried",
    "failed",
    "callbacks",
    "cancelled",
)
PENDING_STATES = frozenset({"CREATED", "RETRY"})
FINAL_STATES = frozenset({"DELIVERED", "ERROR", "CANCELLED"})


@dataclass
class _FlowState:
    in_flight: int = 0
    starts: deque[float] = field(default_factory=deque)
    waiting: deque[str] = field(default_factory=deque)


class Broker(Deliveries):
    """An in-memory QStash: publish, scheduled signed delivery, retries, DLQ and callbacks.

    `time_scale` multiplies every relative delay the broker computes or is given: the default
    backoff, `Upstash-Retry-Delay` and `Upstash-Delay`. Wall-clock promises are kept as given:
    `Upstash-Not-Before`, a destination's `Retry-After`, `Upstash-Timeout`, flow-control periods.
    `limits` is the account's QStash plan: at most `limits.parallelism` deliveries (callbacks
    included) are in flight at once across every flow-control key, the rest wait their turn.
    `stop()` ends scheduling; in-flight attempts run on daemon threads and are not waited for.
    """

    def __init__(
        self,
        *,
        signing_key: str,
        time_scale: float = 1.0,
        limits: Plan | None = None,
        send: Callable[[Message, dict[str, str]], Outcome] = http_attempt,
    ) -> None:
        self.signing_key = signing_key
        self.time_scale = time_scale
        self.plan = limits or plan(DEFAULT_PLAN)
        self._account = _FlowState()
        self._send = send
        self._cond = threading.Condition()
        self._stopped = False
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._messages: dict[str, Message] = {}
        self._dedup: dict[str, tuple[str, float]] = {}
        self._flows: dict[str, _FlowState] = {}
        self._dlq: dict[str, dict[str, Any]] = {}
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self._next_prune = 0.0
        # Fault switch (POST /v2/_dev/drop-publishes): lose this many of the next publishes.
        self.drop_publishes = 0
        self._thread = threading.Thread(target=self._run, name="dev-broker-scheduler", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling and join the scheduler; results of in-flight attempts are dropped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is alive."""
        return self._thread.is_alive()

    # -- API operations ---------------------------------------------------------------------

    def publish(self, msg: Message, dedup_key: str | None = None) -> tuple[str, bool]:
        """Accept `msg` for delivery; returns (message id, deduplicated).

        A `dedup_key` seen in the last 10 minutes returns the first message's id, enqueuing nothing.
        """
        now = time.time()
        with self._cond:
            if dedup_key is not None:
                seen = self._dedup.get(dedup_key)
                if seen is not None and seen[1] > now:
                    self._counts["deduplicated"] += 1
                    return seen[0], True
                self._dedup[dedup_key] = (msg.message_id, now + DEDUP_WINDOW_SECONDS)
            if self.drop_publishes > 0:
                # Lost after the broker said yes: counted nowhere, delivered never.
                self.drop_publishes -= 1
                log.info("fault: dropped publish msg=%s", msg.message_id)
                return msg.message_id, False
            self._counts["published"] += 1
            self._enqueue(msg)
        log.info(
            "publish msg=%s dest=%s retries=%d", msg.message_id, safe_url(msg.url), msg.max_retries
        )
        return msg.message_id, False

    def get(self, message_id: str) -> dict[str, Any] | None:
        """Return the message as JSON, or None when unknown or expired."""
        with self._cond:
            msg = self._messages.get(message_id)
            return message_json(msg) if msg is not None else None

    def cancel(self, message_id: str) -> bool:
        """Cancel a message not yet delivered; returns False when unknown or already finished.

        A pending message is dropped at once; one in flight gets no further retry or DLQ entry.
        """
        with self._cond:
            msg = self._messages.get(message_id)
            if msg is None or msg.state in FINAL_STATES:
                return False
            if msg.state == "ACTIVE":
                msg.state = "CANCEL_REQUESTED"
            elif msg.state != "CANCEL_REQUESTED":
                self._finish(msg, "CANCELLED")
            return True

    def cancel_many(self, message_ids: list[str] | None) -> int:
        """Cancel the given messages, or every unfinished one when None; returns how many."""
        with self._cond:
            ids = list(self._messages) if message_ids is None else message_ids
        return sum(1 for message_id in ids if self.cancel(message_id))

    def dlq_list(self) -> list[dict[str, Any]]:
        """Return the DLQ entries, oldest first."""
        with self._cond:
            return list(self._dlq.values())

    def dlq_get(self, dlq_id: str) -> dict[str, Any] | None:
        """Return one DLQ entry, or None."""
        with self._cond:
            return self._dlq.get(dlq_id)

    def dlq_delete(self, dlq_id: str) -> bool:
        """Remove one DLQ entry; returns whether it existed."""
        with self._cond:
            return self._dlq.pop(dlq_id, None) is not None

    def stats(self) -> dict[str, int]:
        """Return the counters since start.

        `published`: publishes accepted (duplicates excluded); `deduplicated`: publishes answered
        with an earlier id; `deliveries`: HTTP attempts, callbacks included; `delivered`: messages,
        callbacks included, answered 2xx; `retried`: retries scheduled; `failed`: messages moved to
        the DLQ; `callbacks`: callback and failure-callback messages created; `cancelled`: messages
        cancelled before they finished.
        """
        with self._cond:
            return dict(self._counts)

    # -- scheduling -------------------------------------------------------------------------

    def _enqueue(self, msg: Message) -> None:
        self._messages[msg.message_id] = msg
        self._push(msg.message_id, msg.not_before)

    def _push(self, message_id: str, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), message_id))
        self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.time()
                if self._heap and self._heap[0][0] <= now:
                    _, _, message_id = heapq.heappop(self._heap)
                    self._dispatch(message_id, now)
                    continue
                if now >= self._next_prune:
                    self._prune(now)
                wait = self._heap[0][0] - now if self._heap else 1.0
                self._cond.wait(min(wait, 1.0))

    def _dispatch(self, message_id: str, now: float) -> None:
        msg = self._messages.get(message_id)
        if msg is None or msg.state not in PENDING_STATES:
            return
        cap = self.plan.parallelism
        if cap is not None and self._account.in_flight >= cap:
            self._account.waiting.append(message_id)
            return
        if msg.flow is not None and not self._flow_admits(msg, now):
            # Its flow is full: the account slot it would have taken goes to the next in line.
            self._wake_next(self._account)
            return
        self._account.in_flight += 1
        msg.state = "ACTIVE"
        self._counts["deliveries"] += 1
        threading.Thread(
            target=self._attempt, args=(msg,), name=f"dev-broker-{message_id}", daemon=True
        ).start()

    def _flow_admits(self, msg: Message, now: float) -> bool:
        assert msg.flow is not None
        flow = self._flows.setdefault(msg.flow.key, _FlowState())
        if msg.flow.parallelism is not None and flow.in_flight >= msg.flow.parallelism:
            flow.waiting.append(msg.message_id)
            return False
        if msg.flow.rate is not None:
            while flow.starts and flow.starts[0] <= now - msg.flow.period:
                flow.starts.popleft()
            if len(flow.starts) >= msg.flow.rate:
                self._push(msg.message_id, flow.starts[0] + msg.flow.period)
                return False
        flow.in_flight += 1
        flow.starts.append(now)
        return True

    def _flow_release(self, msg: Message) -> None:
        self._account.in_flight -= 1
        self._wake_next(self._account)
        if msg.flow is not None:
            flow = self._flows[msg.flow.key]
            flow.in_flight -= 1
            self._wake_next(flow)

    def _wake_next(self, flow: _FlowState) -> None:
        # Wake the oldest waiter that is still pending; cancelled ones would waste the slot.
        while flow.waiting:
            waiter = self._messages.get(flow.waiting.popleft())
            if waiter is not None and waiter.state in PENDING_STATES:
                self._push(waiter.message_id, time.time())
                break

    def _prune(self, now: float) -> None:
        self._next_prune = now + 30.0
        self._dedup = {key: seen for key, seen in self._dedup.items() if seen[1] > now}
        expired = [
            message_id
            for message_id, msg in self._messages.items()
            if msg.finished_at is not None and msg.finished_at + RETENTION_SECONDS < now
        ]
        for message_id in expired:
            del self._messages[message_id]
