"""`make bench` section 7: what an image costs at submit, against a text submit of the same run.

The producer runs in-process on the adapters Vercel runs (Upstash REST, supabase-py, QStash,
Storage), each through its local stand-in with `DISTANCE_MS` added to every request, as the
distance to those services would be. A text submit is three sequential round trips; an image
submit reads the upload's first 128 KiB from Storage first (lib/images.py), a fourth. Both kinds
are submitted alternately by the same producer; the figures are medians of the wall time of
`Producer.submit` and their ratio. `POST /api/uploads`'s signing (one Storage round trip) is
timed too.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from scripts.bench.common import say
from scripts.stack import embedded

DISTANCE_MS = 20.0  # a stand-in's added delay per request: another data centre
SERVICE_ROLE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UtZ"
    "GVtbyIsImV4cCI6MTk4MzgxMjk5Nn0.VkcJ801Bd30muD6WhyO-U6YR4hiCG96YZmkBFWN3QqI"
)
UPSTASH_TOKEN = "bench-upstash-token"  # noqa: S105 - a local stand-in's


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def image_submit(database_url: str, quick: bool) -> dict[str, Any]:
    """Medians (ms) of text and image submits and of an upload signing; image/text ratio."""
    import threading

    from werkzeug.serving import make_server

    from lib import config, state, store
    from lib.auth import from_settings as verifier_from_settings
    from lib.config import DEV_JWT_SECRET
    from lib.queue.producer import QStashPublisher
    from lib.queue.signing import DEV_TOKEN
    from lib.service import Producer
    from lib.storage import Storage
    from scripts.fakes import dev_broker, postgrest_standin, storage_standin, upstash_standin
    from scripts.fakes.pacing import Paced
    from scripts.stack.demo import SCREENSHOT

    n = 10 if quick else 40
    say(f"image submit: {n} text and {n} image submits, {DISTANCE_MS:g} ms per round trip")
    redis = embedded.start_redis()
    root = tempfile.mkdtemp(prefix="cs-bench-storage-")
    bucket = storage_standin.Bucket("job-images", 5 * 1024 * 1024, ("image/png",))
    apps = {
        "upstash": upstash_standin.create_app(redis.url, UPSTASH_TOKEN, delay_ms=DISTANCE_MS),
        "postgrest": postgrest_standin.create_app(
            database_url, SERVICE_ROLE_KEY, delay_ms=DISTANCE_MS
        ),
        "storage": storage_standin.create_app(root, DEV_JWT_SECRET, [bucket], delay_ms=DISTANCE_MS),
        "broker": dev_broker.create_app(),
    }
    # The dev broker has no delay of its own: paced like the stand-ins (scripts/fakes/pacing.py).
    apps["broker"].wsgi_app = Paced(apps["broker"].wsgi_app, DISTANCE_MS)  # type: ignore[method-assign]
    servers = {name: make_server("127.0.0.1", 0, app, threaded=True) for name, app in apps.items()}
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    url = {name: f"http://127.0.0.1:{s.server_port}" for name, s in servers.items()}
    try:
        settings = config.load(
            "api",
            app_env="development",
            host="127.0.0.1",
            upstash_redis_rest_url=url["upstash"],
            upstash_redis_rest_token=UPSTASH_TOKEN,
            supabase_url=url["postgrest"],
            supabase_service_role_key=SERVICE_ROLE_KEY,
            supabase_jwt_secret=DEV_JWT_SECRET,
            storage_url=url["storage"] + "/storage/v1",
            qstash_url=url["broker"],
            qstash_token=DEV_TOKEN,
            worker_url="http://127.0.0.1:9",  # deliveries go nowhere: submits only
            job_retries=0,
            initial_coins=10 * n,
            user_max_active_paid=10 * n,
            redis_prefix=f"bench-img-{uuid.uuid4().hex[:6]}:",
        )
        storage = Storage(settings.storage_api_url, SERVICE_ROLE_KEY, "job-images")
        producer = Producer(
            settings,
            store.from_settings(settings),
            state.from_settings(settings),
            QStashPublisher(settings, timeout=5.0),
            verifier_from_settings(settings),
            storage,
        )
        user = str(uuid.uuid4())
        text = {
            "kind": "job_summary",
            "input": {"job_description": "Senior Python engineer: queues, workers, SSE."},
        }
        producer.submit(user, text, None)  # warm: the Lua script, connections
        texts, images, signs = [], [], []
        for _ in range(n):
            path = f"{user}/{uuid.uuid4().hex}.png"
            signs.append(_timed(lambda p=path: storage.sign_upload(p)))  # type: ignore[misc]
            token = storage.sign_upload(path)["token"]
            storage._client.from_("job-images").upload_to_signed_url(  # noqa: SLF001
                path, token, SCREENSHOT.read_bytes(), {"content-type": "image/png"}
            )
            image = {"kind": "job_vision_summary", "input": {"image": {"path": path}}}
            texts.append(_timed(lambda: producer.submit(user, text, None)))
            images.append(_timed(lambda b=image: producer.submit(user, b, None)))  # type: ignore[misc]
        producer.store.close()
        producer.state.close()
        storage.close()
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        apps["broker"].extensions["dev_broker"].stop()
        upstash_standin.close(apps["upstash"])
        postgrest_standin.close(apps["postgrest"])
        redis.stop()
    text_p50, image_p50 = statistics.median(texts), statistics.median(images)
    return {
        "distance_ms": DISTANCE_MS,
        "n": n,
        "text_submit_p50_ms": round(text_p50, 1),
        "image_submit_p50_ms": round(image_p50, 1),
        "image_vs_text_p50": round(image_p50 / text_p50, 2),
        "upload_sign_p50_ms": round(statistics.median(signs), 1),
    }
