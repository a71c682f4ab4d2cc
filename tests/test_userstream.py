"""The user stream of `lib.userstream` on both Redis adapters: every job in one stream, one
cursor resuming them all, nothing lost or repeated, and nobody else's jobs."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from helpers.net import wait_for

from lib.auth import Verifier
from lib.errors import AuthError, InputError
from lib.events import JobEvents, data, emit_terminal
from lib.models import EventType, StreamStatus
from lib.state import State
from lib.state.tcp import TcpBackend
from lib.userstream import Cursor, add_user_job, frames


@pytest.fixture
def state(redis_backend: object, redis_prefix: str) -> State:
    return State(redis_backend, prefix=redis_prefix)  # type: ignore[arg-type]


def new_id() -> str:
    return str(uuid.uuid4())


def submit(state: State, user: str) -> str:
    """What submit writes to Redis: the `queued` event, then the user's index entry."""
    job = new_id()
    state.emit(job, [(EventType.STATUS, data(job, status=StreamStatus.QUEUED, attempt=0))])
    add_user_job(state, user, job)
    return job


def parse(frame: str) -> tuple[str, str, dict[str, object]]:
    fields = dict(line.split(": ", 1) for line in frame.strip().split("\n"))
    return fields["id"], fields["event"], json.loads(fields["data"])


def events_of(stream: Iterator[str], count: int) -> list[tuple[str, str, dict[str, object]]]:
    """The next `count` event frames (heartbeats skipped)."""
    out = []
    for frame in stream:
        if frame.startswith("id: "):
            out.append(parse(frame))
            if len(out) == count:
                break
    return out


def open_stream(state: State, user: str, after: str | None = None) -> Iterator[str]:
    return frames(state, user, after, max_seconds=20, heartbeat=0.2)


def run_attempt(state: State, job: str, attempt: int, text: str, *, last: bool) -> None:
    events = JobEvents(state, job, attempt, flush_ms=0)
    events.running()
    events.delta(text)
    if last:
        events.succeeded({"text": text})
    else:
        events.retrying("llm_unavailable", "try again")


def test_three_jobs_stream_in_one_and_a_reconnect_resumes_all_without_loss_or_repeat(
    state: State,
) -> None:
    user = new_id()
    jobs = [submit(state, user) for _ in range(3)]
    stream = open_stream(state, user)
    before = events_of(stream, 3)  # the three `queued`
    run_attempt(state, jobs[0], 1, "first try ", last=False)  # a retry: attempt 2 rewinds it
    run_attempt(state, jobs[1], 1, "only try", last=True)
    before += events_of(stream, 3)
    stream.close()  # the client drops here, in the middle of what was written
    run_attempt(state, jobs[0], 2, "second try", last=True)
    run_attempt(state, jobs[2], 1, "third job", last=True)
    # Job 0: queued, running, delta, error, retrying, then running, delta, result, succeeded;
    # jobs 1 and 2: queued, running, delta, result, succeeded.
    after = events_of(open_stream(state, user, before[-1][0]), 9 + 5 + 5 - len(before))
    got = before + after
    for job in jobs:
        written = [(f["t"], json.loads(f["d"])) for _, f in state.read(job)]
        assert [(t, d) for _, t, d in got if d["job_id"] == job] == written
    rewind = [d for _, t, d in got if d["job_id"] == jobs[0] and d.get("status") == "running"]
    assert [d["attempt"] for d in rewind] == [1, 2]  # the client drops attempt 1's text at 2


def test_a_job_submitted_while_the_stream_is_open_appears_in_it(state: State) -> None:
    user = new_id()
    first = submit(state, user)
    stream = open_stream(state, user)
    assert events_of(stream, 1)[0][2]["job_id"] == first
    assert next(stream) == ": keep-alive\n\n"  # waiting now
    second = submit(state, user)
    emit_terminal(state, second, StreamStatus.CANCELLED, result=None, error=None, attempt=0)
    got = events_of(stream, 2)
    assert [(d["job_id"], d["status"]) for _, _, d in got] == [
        (second, "queued"),
        (second, "cancelled"),
    ]
    # The finished job has left the cursor; the first, still queued, is in it.
    assert Cursor.decode(got[-1][0]).jobs == {first: Cursor.decode(got[0][0]).jobs[first]}


def test_a_finished_job_is_not_streamed_again_and_only_active_jobs_start_a_stream(
    state: State,
) -> None:
    user = new_id()
    done = submit(state, user)
    emit_terminal(state, done, StreamStatus.CANCELLED, result=None, error=None, attempt=0)
    active = submit(state, user)
    got = events_of(open_stream(state, user), 1)
    assert got[0][2]["job_id"] == active
    assert set(Cursor.decode(got[0][0]).jobs) == {active}


def test_another_users_jobs_never_appear_even_when_named_in_the_last_event_id(
    state: State,
) -> None:
    alice, mallory = new_id(), new_id()
    secret = submit(state, alice)
    own = submit(state, mallory)
    first = events_of(open_stream(state, mallory), 1)[0]
    assert first[2]["job_id"] == own
    forged = Cursor(Cursor.decode(first[0]).index, {secret: "0", own: first[0].split(".")[-1]})
    emit_terminal(state, own, StreamStatus.CANCELLED, result=None, error=None, attempt=0)
    resumed = open_stream(state, mallory, forged.encode())
    got = events_of(resumed, 1)
    assert [(d["job_id"], d["status"]) for _, _, d in got] == [(own, "cancelled")]
    assert next(resumed) == ": keep-alive\n\n"  # and nothing of alice's follows


@pytest.mark.parametrize(
    "cursor",
    ["nope", "0~abc.0", "1-0~" + "g" * 32 + ".0", "0~" + uuid.uuid4().hex + ".1-", "9" * 21],
)
def test_a_malformed_last_event_id_is_refused(state: State, cursor: str) -> None:
    with pytest.raises(InputError):
        next(open_stream(state, new_id(), cursor))


def test_the_user_stream_waits_in_one_blocking_read_over_all_its_jobs(
    redis_url: str, redis_prefix: str
) -> None:
    state = State(TcpBackend(redis_url), prefix=redis_prefix)
    user = new_id()
    for _ in range(3):
        submit(state, user)
    watcher = redis.Redis.from_url(redis_url, decode_responses=True)

    def blocked() -> list[str]:
        return [
            c["name"] for c in watcher.client_list() if "b" in c["flags"] and c["cmd"] == "xread"
        ]

    before = len(blocked())
    stream = frames(state, user, None, max_seconds=3, heartbeat=2)
    assert len(events_of(stream, 3)) == 3
    reader = threading.Thread(target=lambda: next(stream))
    reader.start()
    try:
        wait_for(lambda: len(blocked()) > before, timeout=5, what="the blocking read")
        assert len(blocked()) == before + 1
    finally:
        reader.join(10)


def test_a_user_stream_token_opens_only_the_user_stream_and_a_job_token_only_its_job() -> None:
    verifier = Verifier(stream_secret="s" * 32, stream_ttl=600)
    user, job = new_id(), new_id()
    assert verifier.user_stream_user(verifier.mint_user_stream_token(user)) == user
    with pytest.raises(AuthError):
        verifier.user_stream_user(verifier.mint_stream_token(job, user))
    with pytest.raises(AuthError):
        verifier.stream_user(verifier.mint_user_stream_token(user), job)
