"""The Lua script of POST /api/uploads: the per-user window of upload URLs and the index of
issued uploads (COUNT_UPLOAD)."""

from __future__ import annotations

from lib.state.scripts.script import Script

# POST /api/uploads: a fixed-window counter per user (counts one more in the window, which opens
# at the first count and lasts ARGV[1] ms) and, while within ARGV[2], the upload's record in the
# index of issued uploads (the retention sweep deletes those no job names; lib/retention.py).
# KEYS: counter, index. ARGV: window ms, limit, path, now ms.
# Returns {count in the window, ms until it closes}.
COUNT_UPLOAD = Script(
    "count_upload",
    """
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if n == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
if n <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return {n, left}
""",
)
