"""The Lua scripts: every multi-key atomic step on Redis. Both adapters run these same sources,
so the TCP and Upstash REST paths cannot drift apart.

One module per concern: admission slots and leases (`admission`), event streams (`streams`),
worker boxes (`boxes`), detached mode's model slots (`waits`) and queue view (`queue_view`),
uploads (`uploads`), a job's viewers (`viewers`). Callers use `from lib.state import scripts`
and `scripts.EMIT`."""

from __future__ import annotations

from lib.state.scripts.admission import ACQUIRE, ADMISSION_SCAN, ADMIT, LIVE, RELEASE, RENEW
from lib.state.scripts.boxes import BOX_BEAT, PICK_BOX
from lib.state.scripts.queue_view import QUEUE_EMIT, QUEUE_VIEW
from lib.state.scripts.script import Script
from lib.state.scripts.streams import EMIT, HOLD_STREAM, USER_JOB
from lib.state.scripts.uploads import COUNT_UPLOAD
from lib.state.scripts.viewers import LEAVE_VIEWER, OPEN_VIEWER
from lib.state.scripts.waits import RELEASE_SLOT, RENEW_SLOT, TAKE_SLOT

__all__ = [
    "ACQUIRE",
    "ADMISSION_SCAN",
    "ADMIT",
    "BOX_BEAT",
    "COUNT_UPLOAD",
    "EMIT",
    "HOLD_STREAM",
    "LEAVE_VIEWER",
    "LIVE",
    "OPEN_VIEWER",
    "PICK_BOX",
    "QUEUE_EMIT",
    "QUEUE_VIEW",
    "RELEASE",
    "RELEASE_SLOT",
    "RENEW",
    "RENEW_SLOT",
    "Script",
    "TAKE_SLOT",
    "USER_JOB",
]
