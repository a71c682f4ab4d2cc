"""One event stream for all of a user's jobs (`GET /api/events`).

Every job is indexed at submit in its user's job stream (`user:{uid}:jobs`, `add_user_job`).
The user stream follows that index and the event stream of each active job with ONE read: a
blocking XREAD over all of them on TCP; on Upstash REST a subscription to the user's notify
channel (the index PUBLISHes there, and so does every job's EMIT while the job is watched by a
subscribed reader: `job:{id}:owner` names the channel), then one XREAD.

Frames are the jobs' own frames, so each `data` carries its `job_id`, and a `status: running`
with a higher `attempt` still tells the client to drop that job's earlier text. Only the SSE
`id:` differs: it is the whole cursor (`Cursor`): how far the index was read, and how far each
active job's stream. A reconnect with it as Last-Event-ID resumes every job at once, each right
after the last entry the client got: nothing lost, nothing repeated. A job leaves the cursor
with its terminal event; it is never found again, because the index cursor is already past it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from lib.errors import InputError
from lib.events import is_terminal, sse_frame
from lib.jobstream import Viewer
from lib.state import State, scripts

# How many jobs the user's index keeps (approximately: XADD MAXLEN ~): far more than any user may
# have active at once (USER_MAX_ACTIVE_*), so no active job falls out of it.
INDEX_MAX = 200
READ_COUNT = 500

_ENTRY = r"(?:0|[0-9]{1,20}-[0-9]{1,20})"
_CURSOR = re.compile(rf"\A{_ENTRY}(?:~[0-9a-f]{{32}}\.{_ENTRY})*\Z")
MAX_CURSOR = 2048  # about 40 active jobs (the per-user limits allow far fewer)


def add_user_job(state: State, user_id: str, job_id: str) -> None:
    """Index a submitted job for its user's event stream and wake that stream. Call after the
    job's `queued` event is written, so the stream finds it there. Two commands."""
    state.backend.command(
        "SET", state.keys.owner(job_id), state.keys.user_notify(user_id), "EX", state.events_ttl
    )
    state.backend.run(
        scripts.USER_JOB,
        [state.keys.user_jobs(user_id), state.keys.user_notify(user_id)],
        [job_id, state.events_ttl, INDEX_MAX],
    )


@dataclass
class Cursor:
    """Where a user stream stands: the last index entry read, and per active job (id) the last
    of its entries sent ("0": none yet). Encoded as `<index>~<job hex>.<entry>~...`."""

    index: str = "0"
    jobs: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        parts = [self.index] + [f"{uuid.UUID(j).hex}.{e}" for j, e in self.jobs.items()]
        return "~".join(parts)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse a Last-Event-ID of the user stream; raises InputError when it is not one."""
        if len(text) > MAX_CURSOR or not _CURSOR.match(text):
            raise InputError(
                "invalid Last-Event-ID",
                details={"last_event_id": "an id of the user stream (GET /api/events)"},
            )
        index, *jobs = text.split("~")
        parsed = {str(uuid.UUID(j.split(".")[0])): j.split(".")[1] for j in jobs}
        return cls(index, parsed)


def _active_jobs(state: State, user_id: str) -> Cursor:
    """A fresh cursor: every indexed job of the user whose stream is still open."""
    rows = state.backend.read(state.keys.user_jobs(user_id), "0", INDEX_MAX * 2)
    if not rows:
        return Cursor()
    ids = list(dict.fromkeys(fields["j"] for _, fields in rows))
    done = state.backend.command("MGET", *[state.keys.done(j) for j in ids])
    return Cursor(rows[-1][0], {j: "0" for j, d in zip(ids, done, strict=True) if not d})


def _own(state: State, user_id: str, cursor: Cursor) -> Cursor:
    """The cursor without the jobs that are not the user's: a Last-Event-ID is client input,
    and another user's job id in it must not stream that job."""
    if not cursor.jobs:
        return cursor
    owners = state.backend.command("MGET", *[state.keys.owner(j) for j in cursor.jobs])
    mine = state.keys.user_notify(user_id)
    cursor.jobs = {
        j: e for (j, e), owner in zip(cursor.jobs.items(), owners, strict=True) if owner == mine
    }
    return cursor


def frames(
    state: State,
    user_id: str,
    after: str | None,
    *,
    max_seconds: float,
    heartbeat: float,
) -> Iterator[str]:
    """SSE frames of every active job of the user, including jobs submitted meanwhile, after
    the cursor `after` (a Last-Event-ID of this stream, else from each active job's first
    event), until `max_seconds` (the client reconnects with Last-Event-ID). Marks the jobs as
    watched, so their workers flush output promptly. Raises InputError for a bad cursor."""
    cursor = _own(state, user_id, Cursor.decode(after)) if after else _active_jobs(state, user_id)
    deadline = time.monotonic() + max_seconds
    viewer = Viewer(state)
    try:
        yield "retry: 1000\n\n"
        yield from _follow(state, user_id, cursor, deadline, heartbeat, viewer)
    finally:
        # The jobs still active when the stream ends (its client went away, or max_seconds):
        # one viewer less for each, so a job nobody else watches stops flushing at once.
        viewer.close()


def _follow(
    state: State,
    user_id: str,
    cursor: Cursor,
    deadline: float,
    heartbeat: float,
    viewer: Viewer,
) -> Iterator[str]:
    index_key = state.keys.user_jobs(user_id)
    channel = state.keys.user_notify(user_id)
    while (remaining := deadline - time.monotonic()) > 0:
        viewer.mark(cursor.jobs)
        streams = {index_key: cursor.index}
        streams.update({state.keys.events(j): e for j, e in cursor.jobs.items()})
        found = state.backend.wait_many(streams, channel, min(heartbeat, remaining), READ_COUNT)
        if not found:
            yield ": keep-alive\n\n"
            continue
        by_key = dict(found)
        for entry_id, fields in by_key.pop(index_key, []):
            cursor.index = entry_id
            cursor.jobs.setdefault(fields["j"], "0")
        for job_id in list(cursor.jobs):
            for entry_id, fields in by_key.get(state.keys.events(job_id), []):
                event_type, payload = fields.get("t", ""), fields.get("d", "{}")
                cursor.jobs[job_id] = entry_id
                if is_terminal(event_type, payload):
                    del cursor.jobs[job_id]
                    viewer.ended(job_id)
                yield sse_frame(cursor.encode(), event_type, payload)
