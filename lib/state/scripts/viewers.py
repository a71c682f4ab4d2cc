"""The Lua scripts of a job's viewers (lib/state/viewers.py): a stream counted in (OPEN_VIEWER)
and out (LEAVE_VIEWER)."""

from __future__ import annotations

from lib.state.scripts.script import Script

# A job's viewers (lib/state/viewers.py). `job:{id}:viewers` counts the event streams that watch
# the job; it lives a stream's longest life from each opening, so it outlives every stream that
# counted itself in, and needs no refresh. The `watch` key is what the worker reads.
# A stream opens: the watch key set (or refreshed), one more viewer, and a new viewer (the key
# was not set) announced on the watch channel. KEYS: watch, viewers. ARGV: transport, watch ttl
# ms, viewers ttl ms, channel, message. Returns 1 when the job had no viewer, else 0.
OPEN_VIEWER = Script(
    "open_viewer",
    """
local before = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if before then
  return 0
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
""",
)

# A stream that watched the job ends before the job did (its client went away, or it reached
# SSE_MAX_SECONDS). One viewer less; the last one out deletes the watch key and announces it, so
# the worker stops flushing at once instead of when the key lapses. A count below 0 (it expired,
# or a stream of an older producer never counted itself in) is dropped without announcing: the
# watch key then lapses by itself as before. KEYS: watch, viewers. ARGV: channel, message.
# Returns the viewers left.
LEAVE_VIEWER = Script(
    "leave_viewer",
    """
local n = redis.call('DECR', KEYS[2])
if n > 0 then
  return n
end
redis.call('DEL', KEYS[2])
if n == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return n
""",
)
