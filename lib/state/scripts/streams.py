"""The Lua scripts of event streams: a job's events (EMIT), a user's job index (USER_JOB) and
the per-user limit on open event streams (HOLD_STREAM)."""

from __future__ import annotations

from lib.state.scripts.script import Script

# Append events to a job's stream unless it is closed. A terminal status closes it: the `done`
# key records the status, and every later emit is refused, so the terminal event is always last
# and is written once. Closing also sets the stream's last id to the largest possible one
# (XSETID), after which a plain `XADD *` on it fails ("exhausted the last possible ID"): that is
# what lets a watched job's delta go out as one plain XADD (`State.append`) without this
# script's EXISTS check. pcall: a server without XSETID still closes the stream (the `done` key
# and the readers, which stop at the terminal status, keep the guarantee there).
# KEYS: stream, done, notify channel, owner (the channel of the job's user
# stream, `add_user_job`: publishing wakes that stream too).
# ARGV: ttl s, set ttl 0|1, publish 0|1, terminal status or '', then (type, data) pairs.
# Returns the id of the last entry, or false when the stream was already closed.
EMIT = Script(
    "emit",
    """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = false
for i = 5, #ARGV, 2 do
  id = redis.call('XADD', KEYS[1], '*', 't', ARGV[i], 'd', ARGV[i + 1])
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])
  pcall(redis.call, 'XSETID', KEYS[1], '18446744073709551615-18446744073709551615')
end
if ARGV[2] == '1' or ARGV[4] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if ARGV[3] == '1' and id then
  redis.call('PUBLISH', KEYS[3], id)
  local owner = redis.call('GET', KEYS[4])
  if owner then
    redis.call('PUBLISH', owner, id)
  end
end
return id
""",
)

# Hold a slot for one open event stream of a user: members are stream ids scored by the time
# (ms) they lapse. Opening (ARGV[6] = 0; the stream id is new) drops the expired members first,
# so a stream whose function died frees its slot by itself, and is refused at the limit. A
# refresh (1) by a stream that holds a slot always keeps it, even when it lapsed meanwhile, and
# only moves its lapse and the set's TTL (State runs it only when a plain `ZADD XX` found its
# member gone). The set's TTL is a stream's longest life, so it outlives every lapse in it.
# KEYS: the user's stream set. ARGV: stream id, now ms, lapse ms, limit, set ttl ms, refresh 0|1.
# Returns {"ok"} | {"stream_limit", ms until the first slot lapses, open streams}.
HOLD_STREAM = Script(
    "hold_stream",
    """
if ARGV[6] ~= '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
  local open = redis.call('ZCARD', KEYS[1])
  if open >= tonumber(ARGV[4]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'stream_limit', tonumber(first[2]) - tonumber(ARGV[2]), open}
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'ok'}
""",
)

# Index a new job in its user's job stream, which the user's event stream reads and waits on,
# and wake that stream's subscribers (Upstash REST). KEYS: the user's job stream, the user's
# notify channel. ARGV: job id, ttl s, max length. Returns the index entry's id.
USER_JOB = Script(
    "user_job",
    """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'j', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], id)
return id
""",
)
