"""Detached mode's test harness: an in-process worker served on a loopback port, and a dev broker
that delivers to it. The fixture that builds them (`make_detached`) is in fixtures/inprocess.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from helpers.broker import AUTH
from helpers.worker import Created, WorkerEnv
from lib.queue.producer import QStashPublisher


@dataclass
class DetachedEnv:
    """A detached worker (`env`, served at `env.settings.worker_url`) and its dev broker."""

    env: WorkerEnv
    broker_url: str
    broker: Any
    publisher: QStashPublisher

    def submit(self, job: Created, *, dedup_id: str | None = None) -> str:
        """Publish `job` as the producer does; returns the broker's message id."""
        model = self.env.settings.model_for(job.tier, "job_match")
        return self.publisher.publish(
            job.job_id, user_id=job.user_id, tier=job.tier, model=model, dedup_id=dedup_id
        )

    def stats(self) -> dict[str, int]:
        resp = requests.get(f"{self.broker_url}/v2/_dev/stats", headers=AUTH, timeout=5)
        resp.raise_for_status()
        stats: dict[str, int] = resp.json()
        return stats

    @property
    def detached(self) -> Any:
        return self.env.app.extensions["detached"]
