"""A submit's sequential network round trips, on the adapters Vercel runs.

The producer talks to Upstash REST (through the stand-in, on the real test Redis), to Supabase's
PostgREST (through the stand-in, on the real test Postgres) and to QStash (the dev broker). Each
of the three servers records the requests it answers (scripts/fakes/pacing.py), so a test can count
what one submit cost and check that the requests ran one after another: each is a round trip a
user in production waits for. Counted, never timed (the timing is in the bench).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from helpers import images
from helpers.net import SERVICE_ROLE_KEY, UPSTASH_TOKEN, free_port, serve_wsgi
from helpers.storage import upload_direct

from lib import config, state, store
from lib.auth import from_settings as verifier_from_settings
from lib.errors import RateLimitError, UnavailableError
from lib.queue.producer import QStashPublisher
from lib.queue.signing import DEV_TOKEN
from lib.service import Producer
from lib.storage import from_settings as storage_from_settings
from scripts.fakes.pacing import PACING, Paced, Seen

BODY = {
    "kind": "job_match",
    "input": {"resume_text": "Python, Flask, Redis.", "job_description": "Backend engineer."},
}


@dataclass
class Servers:
    upstash: str
    postgrest: str
    broker: str
    storage: str
    paced: dict[str, Paced]

    def mark(self) -> dict[str, int]:
        return {name: p.count() for name, p in self.paced.items()}

    def since(self, mark: dict[str, int]) -> list[tuple[str, Seen]]:
        """The requests answered after `mark`, in the order they began."""
        seen = [(name, s) for name, p in self.paced.items() for s in p.since(mark[name])]
        return sorted(seen, key=lambda item: item[1].started)


@pytest.fixture(scope="module")
def servers(redis_url: str, database_url: str, storage_app: Flask) -> Iterator[Servers]:
    from scripts.fakes import dev_broker, postgrest_standin, upstash_standin

    upstash = upstash_standin.create_app(redis_url, UPSTASH_TOKEN)
    postgrest = postgrest_standin.create_app(database_url, SERVICE_ROLE_KEY)
    broker = dev_broker.create_app()
    broker_paced = Paced(broker.wsgi_app)
    broker.wsgi_app = broker_paced  # type: ignore[method-assign]
    try:
        with (
            serve_wsgi(upstash) as u,
            serve_wsgi(postgrest) as p,
            serve_wsgi(broker) as b,
            serve_wsgi(storage_app) as s,
        ):
            yield Servers(
                u,
                p,
                b,
                f"{s}/storage/v1",
                {
                    "upstash": upstash.extensions[PACING],
                    "postgrest": postgrest.extensions[PACING],
                    "broker": broker_paced,
                    "storage": storage_app.extensions[PACING],
                },
            )
    finally:
        broker.extensions["dev_broker"].stop()
        upstash_standin.close(upstash)
        postgrest_standin.close(postgrest)


@pytest.fixture
def make_producer(servers: Servers, redis_prefix: str) -> Iterator[Callable[..., Producer]]:
    built: list[Producer] = []

    def build(**overrides: Any) -> Producer:
        settings = config.load(
            "api",
            **{
                "upstash_redis_rest_url": servers.upstash,
                "upstash_redis_rest_token": UPSTASH_TOKEN,
                "supabase_url": servers.postgrest,
                "supabase_service_role_key": SERVICE_ROLE_KEY,
                "supabase_jwt_secret": "a-test-secret-that-is-at-least-32-characters",
                "qstash_url": servers.broker,
                "qstash_token": DEV_TOKEN,  # the dev broker's: a development, loopback process
                "app_env": "development",
                "host": "127.0.0.1",
                "worker_url": f"http://127.0.0.1:{free_port()}",  # deliveries just fail
                "job_retries": 0,
                "redis_prefix": redis_prefix,
                "storage_url": servers.storage,
                **overrides,
            },
        )
        producer = Producer(
            settings,
            store.from_settings(settings),
            state.from_settings(settings),
            QStashPublisher(settings, timeout=3.0),
            verifier_from_settings(settings),
            storage_from_settings(settings),
        )
        built.append(producer)
        return producer

    yield build
    for producer in built:
        producer.store.close()
        producer.state.close()


def assert_one_after_another(seen: list[tuple[str, Seen]]) -> None:
    for (_, earlier), (_, later) in zip(seen, seen[1:], strict=False):
        assert later.started >= earlier.ended, f"{later.path} overlapped {earlier.path}"


def user() -> str:
    return str(uuid.uuid4())


def test_a_submit_takes_three_sequential_round_trips_on_a_cold_and_a_warm_producer(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer = make_producer()
    for _ in range(2):  # the first submit loads the Lua script (EVAL), the second reuses it
        mark = servers.mark()

        submitted = producer.submit(user(), BODY, None)

        seen = servers.since(mark)
        assert [(name, s.path) for name, s in seen] == [
            ("postgrest", "/rest/v1/rpc/cs_submit_job"),
            ("upstash", "/"),
            ("broker", f"/v2/publish/{producer.settings.execute_url}"),
        ]
        assert_one_after_another(seen)
        assert submitted.created and submitted.job.status == "queued"


def test_an_image_submit_takes_one_ranged_read_of_storage_before_the_three(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer, someone = make_producer(), user()
    path = upload_direct(servers.storage, someone, images.png())
    body = {"kind": "ocr_extract", "input": {"image": {"path": path}}}
    mark = servers.mark()

    submitted = producer.submit(someone, body, None)

    seen = servers.since(mark)
    assert [(name, s.path) for name, s in seen] == [
        ("storage", f"/storage/v1/object/job-images/{path}"),
        ("postgrest", "/rest/v1/rpc/cs_submit_job"),
        ("upstash", "/"),
        ("broker", f"/v2/publish/{producer.settings.execute_url}"),
    ]
    assert_one_after_another(seen)
    assert submitted.created


def test_a_replayed_idempotency_key_takes_one_round_trip(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer, someone = make_producer(), user()
    first = producer.submit(someone, BODY, "replayed-key")
    mark = servers.mark()

    again = producer.submit(someone, BODY, "replayed-key")

    assert again.job.id == first.job.id and again.created is False
    assert [name for name, _ in servers.since(mark)] == ["postgrest"]


def test_a_refused_submit_takes_at_most_three_round_trips_and_is_taken_back(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer, someone = make_producer(user_max_active_paid=1), user()
    producer.submit(someone, BODY, None)
    mark = servers.mark()

    with pytest.raises(RateLimitError):
        producer.submit(someone, BODY, None)

    seen = servers.since(mark)
    assert [(name, s.path) for name, s in seen] == [
        ("postgrest", "/rest/v1/rpc/cs_submit_job"),
        ("upstash", "/"),
        ("postgrest", "/rest/v1/rpc/cs_withdraw_submit"),
    ]
    assert_one_after_another(seen)
    assert producer.me(someone).coins == 4  # the admitted job's coin only


def test_a_submit_with_the_broker_down_still_answers_after_its_round_trips_and_refunds(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer, someone = make_producer(qstash_url=f"http://127.0.0.1:{free_port()}"), user()

    with pytest.raises(UnavailableError):
        producer.submit(someone, BODY, None)

    me = producer.me(someone)
    assert (me.coins, me.active_jobs) == (5, 0)


def test_the_first_frame_of_a_new_stream_needs_no_subscription_on_upstash_rest(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    producer = make_producer()
    submitted = producer.submit(user(), BODY, None)
    mark = servers.mark()

    frames = producer.stream(submitted.job.id, None, max_seconds=10, heartbeat=5)
    assert next(frames).startswith("retry:")
    first = next(frames)
    frames.close()

    assert "event: status" in first and '"status":"queued"' in first
    seen = [(name, s.path) for name, s in servers.since(mark)]
    # The viewer's presence (SET, then PUBLISH for a new viewer), then one XRANGE.
    assert seen == [("upstash", "/")] * 3


def test_a_submit_over_two_boxes_picks_the_live_one_in_its_three_round_trips(
    make_producer: Callable[..., Producer], servers: Servers
) -> None:
    from lib.boxes import Registry

    first, second = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    producer = make_producer(worker_url="", worker_urls=f"{first},{second}")
    Registry(producer.state).beat(second, "p1", 0, 10)  # only the second box is alive
    mark = servers.mark()

    submitted = producer.submit(user(), BODY, None)

    seen = servers.since(mark)
    assert [(name, s.path) for name, s in seen] == [
        ("postgrest", "/rest/v1/rpc/cs_submit_job"),
        ("upstash", "/"),
        ("broker", f"/v2/publish/{second}/v1/execute"),
    ]
    assert_one_after_another(seen)
    assert submitted.created
