"""Every Redis key template, in one place. All keys start with `REDIS_PREFIX` (default `cs:`).

Per-job keys share the hash tag `{<job id>}`, so a multi-key script over one job stays on one
slot on clustered Redis. TTLs:

| key                          | type   | TTL                                                   |
|------------------------------|--------|-------------------------------------------------------|
| `job:{id}:ev`                | stream | EVENTS_TTL_SECONDS (>= 24 h), refreshed on each status |
| `job:{id}:done`              | string | EVENTS_TTL_SECONDS; terminal status = cancel flag     |
| `job:{id}:lease`             | string | LEASE_TTL_SECONDS, renewed by the running attempt      |
| `job:{id}:watch`             | string | WATCH_TTL (45 s), refreshed by each live SSE reader;  |
|                              |        | deleted when its last viewer leaves                   |
| `job:{id}:viewers`           | string | a stream's longest life (340 s) from each opening:    |
|                              |        | how many event streams watch the job                  |
| `job:{id}:notify`            | pubsub | (a channel, not a key)                                |
| `job:{id}:owner`             | string | EVENTS_TTL_SECONDS; its user's notify channel          |
| `job:{id}:qv`                | string | as `queue:...:view`: its last `queue` event's version   |
| `watch`                      | pubsub | (a channel): "<job id> <transport>" per new viewer,   |
|                              |        | "<job id> left" when its last viewer leaves,          |
|                              |        | "<job id> closed:<status>" when a cancel closes it     |
| `user:{uid}:jobs`            | stream | EVENTS_TTL_SECONDS; one entry (`j`: job id) per job    |
| `user:{uid}:notify`          | pubsub | (a channel): new entries of the user's jobs (REST)     |
| `adm:tier:<tier>`            | zset   | none (one per tier); members expire by score (deadline) |
| `adm:user:<tier>:<user id>`  | zset   | 2 x ADMISSION_TTL_SECONDS, refreshed on each admission  |
| `stats:admission`            | hash   | none (one, a field per tier and refusal reason)         |
| `svc:<tier>`                 | stream | none (one per tier), capped at SERVICE_SAMPLES entries: |
|                              |        | each succeeded job's kind (`k`) and service ms (`ms`)   |
| `sse:user:<user id>`         | zset   | a stream's longest life (SSE_MAX_SECONDS + heartbeat +   |
|                              |        | STREAM_SLOT_TTL, 340 s) from each opening; a member      |
|                              |        | lapses STREAM_SLOT_TTL (45 s) after its last refresh     |
| `sig:<jti>`                  | string | exp + QSTASH_CLOCK_TOLERANCE_SECONDS - now (<= 5.5 min) |
|                              |        | a delivery signature already used (replay cache)        |
| `boxes`                      | hash   | 15 x BOX_HEARTBEAT_SECONDS, refreshed every 10th beat;   |
|                              |        | a field per worker process "<box url> <process id>" =   |
|                              |        | "<deadline ms> <running> <max>" (lib/boxes.py)           |
| `boxes:reserved`             | hash   | 3 x BOX_HEARTBEAT_SECONDS; jobs sent to a box (field:    |
|                              |        | its url) since its last beat                            |
| `slots:{<tier>:<model>}`     | zset   | 2 x LEASE_TTL_SECONDS, refreshed on each take/renewal;  |
|                              |        | detached mode's model slot holders (job id -> lapse ms) |
| `queue:{<tier>:<model>}`     | zset   | as `slots`, refreshed on each wait: waiting jobs,       |
|                              |        | scored by when each joined (ms), the head first         |
| `queue:{<tier>:<model>}:seen`| zset   | the same: each waiter's lapse (ms) unless it polls again |
| `queue:{<tier>:<model>}:gen` | hash   | the same: `<job id>` -> delivery generation (a stale    |
|                              |        | wait message is dropped), `<job id>:waits` -> its waits |
| `stats:waits`                | hash   | none: waits per `<tier>:<model>` (the worker's /metrics) |
| `uploads:<user id>`          | string | 1 h from the user's first upload URL in the window;      |
|                              |        | upload URLs handed out in it (UPLOADS_PER_HOUR)          |
| `uploads:issued`             | zset   | none (one): each upload path handed out, scored by ms;  |
|                              |        | removed by the reconciler's retention sweep             |
| `queue:{<tier>:<model>}:view`| hash   | max(2 x LEASE_TTL, 10 min), refreshed on each update: |
|                              |        | `<job id>:k` kind, `:t0` holder start ms, `:q` last view |
| `queue:{<tier>:<model>}:svc` | hash   | none: kind -> service time (ms, moving average)        |

`sse:user:<user id>` holds one member per open event stream of the user (either endpoint),
scored by the time (ms) it lapses unless its stream refreshes it, so a stream whose function
died frees its slot by itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "cs:"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:ev"

    def done(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:done"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:lease"

    def watch(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:watch"

    def viewers(self, job_id: str) -> str:
        """How many event streams watch the job (lib/state/viewers.py)."""
        return f"{self.prefix}job:{{{job_id}}}:viewers"

    def queue_version(self, job_id: str) -> str:
        """Detached mode: the version of the last `queue` event written for the job."""
        return f"{self.prefix}job:{{{job_id}}}:qv"

    def watch_channel(self) -> str:
        """Where a reader announces a new viewer of a job (its id and transport)."""
        return f"{self.prefix}watch"

    def notify(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}:notify"

    def owner(self, job_id: str) -> str:
        """The notify channel of the job's user (the user stream's wake-up on REST)."""
        return f"{self.prefix}job:{{{job_id}}}:owner"

    def user_jobs(self, user_id: str) -> str:
        """The user's jobs, in submit order: what the user's event stream follows."""
        return f"{self.prefix}user:{{{user_id}}}:jobs"

    def user_notify(self, user_id: str) -> str:
        return f"{self.prefix}user:{{{user_id}}}:notify"

    def tier(self, tier: str) -> str:
        return f"{self.prefix}adm:tier:{tier}"

    def user(self, user_id: str, tier: str) -> str:
        return f"{self.prefix}adm:user:{tier}:{user_id}"

    def service_samples(self, tier: str) -> str:
        """The tier's recent service times (RELEASE writes, ADMIT's refusals read)."""
        return f"{self.prefix}svc:{tier}"

    def admission_stats(self) -> str:
        return f"{self.prefix}stats:admission"

    def streams(self, user_id: str) -> str:
        """The user's open event streams (SSE_MAX_STREAMS_PER_USER)."""
        return f"{self.prefix}sse:user:{user_id}"

    def boxes(self) -> str:
        """The worker boxes' announcements (scale-out), one field per worker process."""
        return f"{self.prefix}boxes"

    def box_reservations(self) -> str:
        """The jobs sent to each box since its last beat."""
        return f"{self.prefix}boxes:reserved"

    def slot_holders(self, tier: str, model: str) -> str:
        """Detached mode: the jobs holding a slot of `tier` and `model`, across processes."""
        return f"{self.prefix}slots:{{{tier}:{model}}}"

    def model_queue(self, tier: str, model: str) -> str:
        """Detached mode: the jobs waiting for a slot of `tier` and `model`, in order of arrival."""
        return f"{self.prefix}queue:{{{tier}:{model}}}"

    def model_queue_seen(self, tier: str, model: str) -> str:
        return f"{self.prefix}queue:{{{tier}:{model}}}:seen"

    def model_queue_gen(self, tier: str, model: str) -> str:
        return f"{self.prefix}queue:{{{tier}:{model}}}:gen"

    def model_queue_view(self, tier: str, model: str) -> str:
        """Detached mode: the queue's live view (lib/state/queue_view.py)."""
        return f"{self.prefix}queue:{{{tier}:{model}}}:view"

    def service_times(self, tier: str, model: str) -> str:
        """Detached mode: service time per kind of `tier` and `model` (a moving average)."""
        return f"{self.prefix}queue:{{{tier}:{model}}}:svc"

    def uploads(self, user_id: str) -> str:
        """The user's signed upload URLs in the current hour (POST /api/uploads)."""
        return f"{self.prefix}uploads:{user_id}"

    def uploads_issued(self) -> str:
        """Every upload path handed out, scored by when (ms), until the retention sweep."""
        return f"{self.prefix}uploads:issued"

    def wait_stats(self) -> str:
        return f"{self.prefix}stats:waits"

    def signature(self, jti: str) -> str:
        """A delivery signature's id, kept until the signature could no longer verify."""
        return f"{self.prefix}sig:{jti}"
