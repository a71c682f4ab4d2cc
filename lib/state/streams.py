"""The event-stream slots of a user: at most `SSE_MAX_STREAMS_PER_USER` open streams (both SSE
endpoints), a `State` mixin.

Key: `sse:user:<user id>`, a sorted set of stream ids scored by when each lapses (ms): a stream
refreshes its own every STREAM_SLOT_TTL / 3 (lib/events.py `HeldStream`), so one whose function
died lapses by itself, and openings drop the lapsed ones before they count (HOLD_STREAM). The
set's TTL is a stream's longest life (SSE_MAX_SECONDS plus STREAM_SLOT_TTL), set by each opening,
so a refresh is one plain `ZADD XX`: it never creates the set (no key without a TTL) and, when
its member is gone (it lapsed and an opening dropped it, or the set expired), the script puts it
back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lib.state import scripts
from lib.state.results import stream_limit

if TYPE_CHECKING:
    from lib.state.backend import RedisBackend
    from lib.state.keys import Keys


class StreamSlotsState:
    """The stream-slot operations of `lib.state.State`."""

    backend: RedisBackend
    keys: Keys
    stream_slot_ttl_ms: int
    stream_life_ms: int

    def hold_stream(
        self, user_id: str, stream_id: str, limit: int, *, refresh: bool = False
    ) -> None:
        """Count one open event stream of the user for the next STREAM_SLOT_TTL.

        Opening (`refresh=False`, a new `stream_id`) raises RateLimitError (code stream_limit,
        with retry_after and details) when the user already holds `limit` streams; a refresh
        keeps the slot always. A refresh is one command (`ZADD XX CH`), the script only when its
        slot was gone; an opening is the script (5 commands).
        """
        now = int(time.time() * 1000)
        key = self.keys.streams(user_id)
        lapse = now + self.stream_slot_ttl_ms
        # CH counts a changed score, so 0 also when the lapse did not move (a refresh in the
        # opening's millisecond): the script then runs, which is harmless.
        if refresh and int(self.backend.command("ZADD", key, "XX", "CH", lapse, stream_id)):
            return
        result = self.backend.run(
            scripts.HOLD_STREAM,
            [key],
            [stream_id, now, lapse, limit, self.stream_life_ms, int(refresh)],
        )
        if result[0] == "stream_limit":
            raise stream_limit(limit, int(result[1]), int(result[2]))

    def drop_stream(self, user_id: str, stream_id: str) -> None:
        """Free an event stream's slot (it ended or its client went away). Idempotent."""
        self.backend.command("ZREM", self.keys.streams(user_id), stream_id)
