"""The dev broker's test harness: a recording destination and a running broker.

The fixtures that start them on one loopback server are in fixtures/fakes.py (`mounts`,
`make_broker`, `broker`, `dest`); the broker runs at time_scale=0.001, so
the documented backoff (12 s, 2 min 28 s, ...) takes milliseconds. Every request the destination
receives is checked with both `qstash.Receiver` and `lib.queue.receiver.verify`; the `dest`
fixture fails the test if any signature did not verify.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask, Response, request
from qstash import QStash, Receiver
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from lib.queue import receiver
from lib.queue.signing import DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY, DEV_TOKEN

SCALE = 0.001
AUTH = {"Authorization": f"Bearer {DEV_TOKEN}"}


@dataclass
class Delivery:
    """One request the destination received."""

    method: str
    path: str
    url: str
    headers: dict[str, str]
    body: bytes
    at: float
    signature_errors: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Destination:
    """A loopback HTTP endpoint that records requests and answers what each test scripts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.replies: dict[str, list[tuple[int, dict[str, str], str]]] = {}
        self.holds: dict[str, float] = {}
        self.resets: dict[str, int] = {}
        self.release = threading.Event()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.url = ""
        self.app = Flask("destination")
        self.app.add_url_rule(
            "/<path:path>", "any", self._handle, methods=["GET", "POST", "PUT", "DELETE"]
        )

    def script(self, path: str, *replies: tuple[int, dict[str, str], str]) -> None:
        """Answer the next requests to `path` with `replies`, then 200 "ok"."""
        self.replies[f"/{path}"] = list(replies)

    def hold(self, path: str, seconds: float) -> None:
        """Keep requests to `path` open `seconds`, or until `release` is set."""
        self.holds[f"/{path}"] = seconds

    def reset(self, path: str, times: int) -> None:
        """Drop the connection of the next `times` requests to `path` without an answer."""
        self.resets[f"/{path}"] = times

    def to(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == f"/{path}"]

    def _verify(self, delivery: Delivery) -> None:
        signature = delivery.headers.get("Upstash-Signature", "")
        try:
            Receiver(DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY).verify(
                signature=signature, body=delivery.body.decode(), url=delivery.url
            )
        except Exception as exc:  # noqa: BLE001 - recorded, then asserted by the fixture
            delivery.signature_errors.append(f"qstash.Receiver: {exc!r}")
        try:
            receiver.verify(
                signature,
                delivery.body,
                keys=[DEV_CURRENT_SIGNING_KEY, DEV_NEXT_SIGNING_KEY],
                url=delivery.url,
            )
        except receiver.InvalidSignature as exc:
            delivery.signature_errors.append(f"lib.queue.receiver: {exc!r}")

    def _handle(self, path: str) -> Response:
        delivery = Delivery(
            method=request.method,
            path=f"/{path}",
            url=request.url,
            headers=dict(request.headers),
            body=request.get_data(),
            at=time.time(),
        )
        self._verify(delivery)
        with self.lock:
            self.deliveries.append(delivery)
            current = self.in_flight.get(delivery.path, 0) + 1
            self.in_flight[delivery.path] = current
            self.max_in_flight[delivery.path] = max(
                current, self.max_in_flight.get(delivery.path, 0)
            )
            queue = self.replies.get(delivery.path)
            status, headers, body = queue.pop(0) if queue else (200, {}, "ok")
            drop = self.resets.get(delivery.path, 0) > 0
            if drop:
                self.resets[delivery.path] -= 1
        try:
            if drop:
                # What a SIGKILLed worker leaves behind: the connection ends mid-request.
                request.environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
            if delivery.path in self.holds:
                self.release.wait(self.holds[delivery.path])
        finally:
            with self.lock:
                self.in_flight[delivery.path] -= 1
        return Response(body, status=status, headers=headers)


@dataclass
class RunningBroker:
    url: str
    app: Flask
    client: QStash

    def stats(self) -> dict[str, int]:
        resp = requests.get(f"{self.url}/v2/_dev/stats", headers=AUTH, timeout=5)
        resp.raise_for_status()
        stats: dict[str, int] = resp.json()
        return stats

    def state(self, message_id: str) -> str:
        resp = requests.get(f"{self.url}/v2/messages/{message_id}", headers=AUTH, timeout=5)
        resp.raise_for_status()
        return str(resp.json()["state"])


def b64decode(text: str) -> bytes:
    """A base64 field of a callback or DLQ payload, decoded."""
    return base64.b64decode(text)


_mount_ids = itertools.count()


def mount(mounts: tuple[str, DispatcherMiddleware], app: Any) -> tuple[str, str]:
    """Mount `app` on the module's shared server (fixtures/fakes.py `mounts`) under a fresh prefix;
    returns its base URL and the prefix."""
    url, dispatcher = mounts
    prefix = f"/m{next(_mount_ids)}"
    dispatcher.mounts[prefix] = app
    return url + prefix, prefix
