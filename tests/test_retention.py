"""Image retention (lib/retention.py), run by the reconciler on the real Postgres, Redis and the
Storage stand-in: an image goes once no job needs it, and never while one does.

Time is moved in the database and in the upload index (a job's `finished_at`, an upload's
score set back) rather than waited for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from helpers import images
from helpers.net import SERVICE_ROLE_KEY
from helpers.storage import BUCKET, upload_direct

from lib.errors import NotFoundError
from lib.handlers import registry
from lib.handlers.base import no_images
from lib.images import ImageRef, count_upload
from lib.queue.producer import QStashPublisher
from lib.reconcile import Reconciler, Summary
from lib.retention import UPLOAD_ORPHAN_SECONDS
from lib.state import State
from lib.storage import Storage

if TYPE_CHECKING:
    from helpers.worker import Db, WorkerEnv


@dataclass
class Sweeping:
    env: WorkerEnv
    db: Db
    storage: Storage
    storage_url: str
    state: State

    def run(self, **overrides: Any) -> Summary:
        """Reconciler runs until no image is due: the test database is shared, so other tests'
        ended image jobs may come first in a run's batch."""
        settings = self.env.settings.model_copy(update=overrides)
        reconciler = Reconciler(
            settings,
            self.env.store,
            self.state,
            QStashPublisher(settings),
            ready=lambda box: False,
            storage=self.storage,
        )
        total = Summary()
        for _ in range(100):
            summary = reconciler.run()
            total.images_deleted += summary.images_deleted
            total.uploads_deleted += summary.uploads_deleted
            due = self.db.one(
                "select count(*) from cs_jobs where finished_at is not null and input ? 'image'"
                " and images_released_at is null"
                " and finished_at < now() - make_interval(hours => %s)",
                settings.image_retention_hours,
            )
            if not due and not summary.uploads_deleted:
                return total
        raise AssertionError("the sweep never caught up")

    def upload(self, user_id: str) -> str:
        return upload_direct(self.storage_url, user_id, images.png())

    def exists(self, path: str) -> bool:
        try:
            self.storage.head(path, 16)
        except NotFoundError:
            return False
        return True

    def job(self, user_id: str, path: str, kind: str = "ocr_extract") -> str:
        """A job naming the image, queued (inserted and charged, as the producer does)."""
        job_id = str(uuid.uuid4())
        job_input: dict[str, Any] = {"image": {"path": path}, "language": "en"}
        if kind == "match_from_image":
            job_input["resume_text"] = "Python developer"
        outcome = self.env.store.submit(
            job_id=job_id,
            user_id=user_id,
            kind=kind,
            tier="paid",
            cost=1,
            input=job_input,
            idempotency_key=None,
            request_hash=job_id,
        )
        assert outcome["outcome"] == "created", outcome
        return job_id

    def end(self, job_id: str, user_id: str, hours_ago: float) -> None:
        """Cancel the job (terminal), then say it ended `hours_ago`."""
        self.env.store.cancel(job_id, user_id)
        self.sql(
            "update cs_jobs set finished_at = now() - make_interval(secs => %s) where id = %s",
            hours_ago * 3600,
            job_id,
        )

    def sql(self, statement: str, *params: Any) -> None:
        with psycopg.connect(self.db.url, autocommit=True) as conn:
            conn.execute(statement, params)

    def issue(self, user_id: str, path: str, seconds_ago: float) -> None:
        """Record an upload URL as `POST /api/uploads` does, handed out `seconds_ago`."""
        count_upload(self.state, user_id, 1000, path)
        key = self.state.keys.uploads_issued()
        score = int((time.time() - seconds_ago) * 1000)
        self.state.backend.command("ZADD", key, score, path)

    def issued(self) -> set[str]:
        key = self.state.keys.uploads_issued()
        members = self.state.backend.command("ZRANGE", key, 0, -1) or []
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


@pytest.fixture
def sweeping(make_worker: Callable[..., WorkerEnv], db: Db, storage_url: str) -> Iterator[Sweeping]:
    env = make_worker()
    storage = Storage(storage_url, SERVICE_ROLE_KEY, BUCKET)
    yield Sweeping(env, db, storage, storage_url, env.state)
    storage.close()


def test_every_image_kind_names_its_upload_where_the_sql_looks_for_it() -> None:
    # cs_images_due / cs_images_named read `input.image.path`; a kind naming an image elsewhere
    # would keep it forever (or lose it while a job needs it).
    path = f"{uuid.uuid4()}/{uuid.uuid4().hex}.png"
    image_kinds = set()
    for kind, handler in registry().items():
        refs = [n for n, f in handler.input_model.model_fields.items() if f.annotation is ImageRef]
        assert refs in ([], ["image"]), kind
        if handler.images is no_images:
            assert not refs, kind
            continue
        image_kinds.add(kind)
        built = handler.input_model.model_construct(image=ImageRef(path=path))
        assert handler.images(built) == {"input.image.path": path}, kind
    assert {"ocr_extract", "job_vision_summary", "match_from_image"} <= image_kinds


def test_an_ended_jobs_image_is_deleted_after_the_retention_and_not_before(
    sweeping: Sweeping,
) -> None:
    user = str(uuid.uuid4())
    path = sweeping.upload(user)
    job_id = sweeping.job(user, path)
    sweeping.end(job_id, user, hours_ago=23)

    sweeping.run(image_retention_hours=24)
    assert sweeping.exists(path)  # within the day: the user can still look and resubmit

    sweeping.end(job_id, user, hours_ago=25)
    assert sweeping.run(image_retention_hours=24).images_deleted >= 1
    assert not sweeping.exists(path)
    released = sweeping.db.one("select images_released_at from cs_jobs where id = %s", job_id)
    assert released is not None
    assert sweeping.run(image_retention_hours=24).images_deleted == 0  # once


def test_a_retention_of_zero_deletes_at_the_first_run_after_the_end(sweeping: Sweeping) -> None:
    user = str(uuid.uuid4())
    path = sweeping.upload(user)
    job_id = sweeping.job(user, path, kind="match_from_image")
    sweeping.end(job_id, user, hours_ago=0.001)

    sweeping.run(image_retention_hours=0)

    assert not sweeping.exists(path)


def test_an_image_a_queued_or_running_job_names_is_never_deleted(sweeping: Sweeping) -> None:
    user = str(uuid.uuid4())
    path = sweeping.upload(user)
    ended = sweeping.job(user, path)
    sweeping.end(ended, user, hours_ago=1000)
    queued = sweeping.job(user, path, kind="match_from_image")  # its ocr step runs later
    running = sweeping.job(user, path)
    sweeping.env.store.start_attempt(running)
    sweeping.issue(user, path, seconds_ago=UPLOAD_ORPHAN_SECONDS * 10)
    for job_id in (queued, running):  # however old they look
        sweeping.sql(
            "update cs_jobs set created_at = now() - interval '30 days' where id = %s", job_id
        )

    sweeping.run(image_retention_hours=0)
    sweeping.run(image_retention_hours=0)

    assert sweeping.exists(path)
    assert path not in sweeping.issued()  # named: the job rule owns it now

    # The last of them to end releases it, after the retention.
    sweeping.end(queued, user, hours_ago=2)
    sweeping.end(running, user, hours_ago=2)
    sweeping.run(image_retention_hours=3)
    assert sweeping.exists(path)
    sweeping.run(image_retention_hours=1)
    assert not sweeping.exists(path)


def test_an_upload_no_job_names_is_deleted_after_its_window_and_not_before(
    sweeping: Sweeping, redis_backend: Any
) -> None:
    # Over either Redis adapter (the producer on Vercel reads the index over Upstash REST).
    sweeping.state = State(redis_backend, prefix=sweeping.env.settings.redis_prefix)
    user = str(uuid.uuid4())
    old, recent = sweeping.upload(user), sweeping.upload(user)
    never_uploaded = f"{user}/{uuid.uuid4().hex}.png"  # a URL handed out, never used
    sweeping.issue(user, old, seconds_ago=UPLOAD_ORPHAN_SECONDS + 60)
    sweeping.issue(user, never_uploaded, seconds_ago=UPLOAD_ORPHAN_SECONDS + 60)
    sweeping.issue(user, recent, seconds_ago=UPLOAD_ORPHAN_SECONDS - 600)

    summary = sweeping.run()

    assert summary.uploads_deleted == 1
    assert not sweeping.exists(old)
    assert sweeping.exists(recent)
    assert sweeping.issued() == {recent}


def test_a_sweep_that_died_after_deleting_deletes_nothing_twice_and_heals(
    sweeping: Sweeping,
) -> None:
    user = str(uuid.uuid4())
    path = sweeping.upload(user)
    sweeping.issue(user, path, seconds_ago=UPLOAD_ORPHAN_SECONDS + 60)
    sweeping.storage.remove([path])  # the run died here: deleted, still recorded

    assert sweeping.run().uploads_deleted == 0
    assert sweeping.issued() == set()


def test_the_upload_endpoints_record_is_written_only_within_the_quota(
    sweeping: Sweeping,
) -> None:
    from lib.errors import RateLimitError

    user = str(uuid.uuid4())
    first, second = f"{user}/{uuid.uuid4().hex}.png", f"{user}/{uuid.uuid4().hex}.png"
    count_upload(sweeping.state, user, 1, first)
    with pytest.raises(RateLimitError):
        count_upload(sweeping.state, user, 1, second)

    assert sweeping.issued() == {first}


def test_the_retention_functions_answer_alike_through_both_store_adapters(
    store_backend: Any, db: Db
) -> None:
    user, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    path, unknown = f"{user}/{uuid.uuid4().hex}.png", f"{user}/{uuid.uuid4().hex}.png"
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute(
            "insert into cs_jobs (id, user_id, kind, tier, status, cost, input, finished_at,"
            " created_at) values (%s, %s, 'ocr_extract', 'paid', 'cancelled', 1,"
            " jsonb_build_object('image', jsonb_build_object('path', %s::text)),"
            " now() - interval '400 days', now() - interval '400 days')",
            (job_id, user, path),
        )

    named = store_backend.call("cs_images_named", {"p_paths": [path, unknown]})
    due = store_backend.call("cs_images_due", {"p_retention_seconds": 3600, "p_limit": 1000})
    marked = store_backend.call("cs_images_released", {"p_ids": [job_id]})
    again = store_backend.call("cs_images_released", {"p_ids": [job_id]})

    assert named == [path]
    assert {"id": job_id, "user_id": user, "path": path, "needed": False} in due
    assert (marked, again) == (1, 0)
