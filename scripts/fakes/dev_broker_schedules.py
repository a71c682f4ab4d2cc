"""QStash Schedules for the dev broker: a cron expression that publishes a message on each tick.

The API is QStash's (https://upstash.com/docs/qstash/api/schedules/create, get, list, remove),
as the official SDK calls it (qstash-py `qstash/schedule.py`, `client.schedule.create(
destination=..., cron=...)`):

- `POST /v2/schedules/<destination>` with `Upstash-Cron` and the usual publish headers
  (`Upstash-Retries`, `Upstash-Timeout`, `Upstash-Forward-*`, callbacks...), answering
  `{"scheduleId": ...}`; an `Upstash-Schedule-Id` header names the schedule, and a schedule
  with that id is replaced ("Create/overwrite a schedule with a user chosen schedule id");
- `GET /v2/schedules`, `GET /v2/schedules/<id>` (the fields `parse_schedule_response` reads:
  scheduleId, cron, createdAt (ms), destination, method, header, body, retries...);
- `DELETE /v2/schedules/<id>`.

Each tick publishes a new message through the broker
(`scripts.fakes.dev_broker_core.Broker.publish`),
so it is delivered, signed (a fresh signature and jti per attempt), retried and sent to the DLQ
like any other, with its own `Upstash-Message-Id` and the `Upstash-Schedule-Id` header.
Cron expressions are read by `croniter`, in UTC as QStash does. `time_scale` shortens the time
between ticks like every other delay of the dev broker (DEV_BROKER_TIME_SCALE).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import Headers

from scripts.fakes.dev_broker_core import Broker
from scripts.fakes.dev_broker_model import RuleError, safe_url
from scripts.fakes.dev_broker_publish import parse_publish

log = logging.getLogger("dev_broker")

SCHEDULES_PREFIX = "/v2/schedules/"


@dataclass
class Schedule:
    """One schedule: what to publish, and when its next tick is due (real and cron time)."""

    schedule_id: str
    destination: str
    cron: str
    headers: list[tuple[str, str]]
    body: bytes
    created_at: float
    # Cron time runs `1 / time_scale` times faster than real time from `anchor`.
    anchor: float
    next_cron: float
    last_tick: float | None = None
    retries: int = 3
    method: str = "POST"
    ticks: int = field(default=0)


class Schedules:
    """The broker's schedules and the thread that publishes their ticks (it ends with the
    broker's scheduler: `Broker.stop()` stops the ticks too)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._cond = threading.Condition()
        self._schedules: dict[str, Schedule] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dev-broker-schedules", daemon=True)
        self._thread.start()

    def create(self, destination: str, headers: Headers, body: bytes, caller_ip: str | None) -> str:
        """Add (or replace, for a given `Upstash-Schedule-Id`) a schedule; return its id.

        Raises RuleError for a missing or invalid `Upstash-Cron` or any header a publish
        refuses (the tick's publish is parsed up front, so a bad schedule never ticks)."""
        cron = headers.get("Upstash-Cron", "").strip()
        if not cron or not croniter.is_valid(cron):
            raise RuleError("Upstash-Cron must be a valid cron expression")
        message, _ = self._message(destination, headers, body, caller_ip)
        now = time.time()
        schedule = Schedule(
            schedule_id=headers.get("Upstash-Schedule-Id") or f"scd_{uuid.uuid4().hex}",
            destination=destination,
            cron=cron,
            headers=[(k, v) for k, v in headers.items() if k.lower() != "authorization"],
            body=body,
            created_at=now,
            anchor=now,
            next_cron=croniter(cron, now).get_next(float),
            retries=message.max_retries,
            method=message.method,
        )
        with self._cond:
            self._schedules[schedule.schedule_id] = schedule
            self._cond.notify_all()
        log.info("schedule %s cron=%r dest=%s", schedule.schedule_id, cron, safe_url(destination))
        return schedule.schedule_id

    def get(self, schedule_id: str) -> dict[str, Any] | None:
        with self._cond:
            found = self._schedules.get(schedule_id)
            return self._json(found) if found is not None else None

    def list(self) -> list[dict[str, Any]]:
        with self._cond:
            return [self._json(s) for s in self._schedules.values()]

    def delete(self, schedule_id: str) -> bool:
        with self._cond:
            return self._schedules.pop(schedule_id, None) is not None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _due(self, schedule: Schedule) -> float:
        return schedule.anchor + (schedule.next_cron - schedule.anchor) * self.broker.time_scale

    def _run(self) -> None:
        with self._cond:
            while not self._stopped and self.broker.running:
                now = time.time()
                due = [s for s in self._schedules.values() if self._due(s) <= now]
                for schedule in due:
                    self._tick(schedule, now)
                wait = min((self._due(s) - now for s in self._schedules.values()), default=1.0)
                self._cond.wait(max(0.01, min(wait, 1.0)))

    def _tick(self, schedule: Schedule, now: float) -> None:
        # Ticks missed meanwhile are not made up: the next one is the first due after now.
        cron_now = schedule.anchor + (now - schedule.anchor) / self.broker.time_scale
        schedule.next_cron = croniter(schedule.cron, max(cron_now, schedule.next_cron)).get_next(
            float
        )
        schedule.last_tick = now
        schedule.ticks += 1
        message, _ = self._message(
            schedule.destination, Headers(schedule.headers), schedule.body, None
        )
        message.headers["Upstash-Schedule-Id"] = schedule.schedule_id
        # A tick is a new message each time: no deduplication across ticks.
        self.broker.publish(message, None)

    def _message(
        self, destination: str, headers: Headers, body: bytes, caller_ip: str | None
    ) -> Any:
        environ = {"PATH_INFO": "/v2/publish/" + destination, "QUERY_STRING": ""}
        return parse_publish(
            environ,
            headers,
            body,
            time_scale=self.broker.time_scale,
            caller_ip=caller_ip,
            limits=self.broker.plan,
        )

    def _json(self, s: Schedule) -> dict[str, Any]:
        header: dict[str, list[str]] = {}
        for name, value in s.headers:
            if name.lower().startswith("upstash-forward-"):
                header.setdefault(name[len("upstash-forward-") :], []).append(value)
        found: dict[str, Any] = {
            "scheduleId": s.schedule_id,
            "cron": s.cron,
            "createdAt": int(s.created_at * 1000),
            "destination": s.destination,
            "method": s.method,
            "header": header,
            "body": s.body.decode("utf-8", "replace"),
            "retries": s.retries,
            "isPaused": False,
            "nextScheduleTime": int(self._due(s) * 1000),
        }
        if s.last_tick is not None:
            found["lastScheduleTime"] = int(s.last_tick * 1000)
        return found


api = Blueprint("dev_broker_schedules", __name__)


def _schedules() -> Schedules:
    schedules: Schedules = current_app.extensions["dev_broker_schedules"]
    return schedules


def _requested_destination() -> str:
    raw = str(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or "")
    if SCHEDULES_PREFIX in raw:
        destination = raw.split(SCHEDULES_PREFIX, 1)[1]
    else:
        destination = request.path[len(SCHEDULES_PREFIX) :]
    if not destination.startswith(("http://", "https://")):
        raise RuleError("destination must be an http:// or https:// URL")
    return destination


@api.post("/v2/schedules/<path:_destination>")
def create(_destination: str) -> Response:
    schedule_id = _schedules().create(
        _requested_destination(), request.headers, request.get_data(), request.remote_addr
    )
    return jsonify(scheduleId=schedule_id)


@api.get("/v2/schedules")
def list_schedules() -> Response:
    return jsonify(_schedules().list())


@api.get("/v2/schedules/<schedule_id>")
def get(schedule_id: str) -> Response:
    found = _schedules().get(schedule_id)
    if found is None:
        resp = jsonify(error="schedule not found")
        resp.status_code = 404
        return resp
    return jsonify(found)


@api.delete("/v2/schedules/<schedule_id>")
def delete(schedule_id: str) -> Response:
    if not _schedules().delete(schedule_id):
        resp = jsonify(error="schedule not found")
        resp.status_code = 404
        return resp
    return Response(status=200)


def install(app: Any, broker: Broker) -> Schedules:
    """Serve the schedules API on the broker's app; returns the running `Schedules`."""
    schedules = Schedules(broker)
    app.extensions["dev_broker_schedules"] = schedules
    app.register_blueprint(api)
    return schedules
