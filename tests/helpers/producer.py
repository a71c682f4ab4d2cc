"""The producer (lib/service.py) built in-process on the real services, and what its tests send.

`ProducerEnv` is what fixtures/inprocess.py's `make_producer` builds: the real `QStashPublisher`
(the official SDK) publishing to the project's QStash-compatible dev broker.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from helpers.stack import JD, RESUME
from lib.queue.signing import DEV_TOKEN
from lib.service import Producer


def body(kind: str = "job_match", tier: str | None = None, **input_fields: Any) -> dict[str, Any]:
    """A submit body of `kind` on the shared resume and job description."""
    payload: dict[str, Any] = {
        "kind": kind,
        "input": {"resume_text": RESUME, "job_description": JD, **input_fields},
    }
    if tier is not None:
        payload["tier"] = tier
    return payload


@dataclass
class ProducerEnv:
    settings: Any
    producer: Producer
    broker_url: str

    @property
    def state(self) -> Any:
        return self.producer.state

    def published(self) -> int:
        response = httpx.get(
            f"{self.broker_url}/v2/_dev/stats",
            headers={"Authorization": f"Bearer {DEV_TOKEN}"},
            timeout=5,
        )
        response.raise_for_status()
        return int(response.json()["published"])

    def live(self) -> int:
        return int(self.state.live("paid")) + int(self.state.live("free"))


def new_user() -> str:
    return str(uuid.uuid4())


def events_of(env: ProducerEnv, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f["t"], json.loads(f["d"])) for _, f in env.state.read(job_id, "0", 1000)]
