"""The Lua scripts of a job's admission slots and its lease: admit (ADMIT), count (LIVE), the
reconciler's scan (ADMISSION_SCAN), and one attempt's lease (ACQUIRE, RENEW, RELEASE)."""

from __future__ import annotations

from lib.state.scripts.boxes import PICK_BOX_LUA
from lib.state.scripts.script import Script

# Admit a job into its tier and its user's live sets. Members are job ids scored by a deadline
# (ms); expired members are dropped first, so a crashed job frees its slot by itself. A refusal
# counts itself in the stats hash (field "<tier>:<reason>"; the worker's /metrics reads it); an
# admission writes nothing there, as Redis is billed per command. A refusal also says when the
# next slot is expected, from the same round trip (the submit's 429 `details` and Retry-After):
# the full set's member with the lowest score started first (a member's score is its admission
# or start time plus the admission TTL, `ARGV[3] - ARGV[2]`), so it is expected to end first,
# after the tier's mean service time (the last ARGV[9] samples of the tier's service stream,
# written by RELEASE) less the time it has run; with no samples yet, ARGV[8] ms.
# With KEYS[5] and KEYS[6], a new admission also starts the job's event stream with its first
# event (the producer's `queued` status, in the same round trip), as EMIT would: unless the
# stream is closed, XADD, then the stream's TTL. No PUBLISH: no reader can wait on a job whose
# id nobody has been told yet.
# With KEYS[7..9] it also indexes the job for its user's event stream (GET /api/events), as
# USER_JOB does: the job's owner key, an entry in the user's job stream, a PUBLISH on the user's
# channel (an open user stream is waiting there), so a submit stays three round trips.
# With KEYS[10..11] it also picks the worker box to publish the job to, as PICK_BOX does (from
# ARGV[14]), so scale-out costs the submit no round trip: {"ok", box url or false}.
# KEYS: tier set, user set, stats hash, tier service samples[, stream, done[, owner, user jobs,
# user channel[, boxes, box reservations]]].
# ARGV: job id, now ms, deadline ms, tier max, user max, user ttl ms, tier, default service ms,
# samples[, events ttl s, event type, event data[, user jobs max length[, PICK_BOX's ARGV from
# its 2nd]]].
# Returns {"ok"[, box]} | {"backpressure" | "user_concurrency", live jobs in the full set, ms
# until its first slot is expected to free, mean service ms or -1 without samples}.
ADMIT = Script(
    "admit",
    PICK_BOX_LUA
    + """
local function refuse(reason, set)
  redis.call('HINCRBY', KEYS[3], ARGV[7] .. ':' .. reason, 1)
  local live = redis.call('ZCARD', set)
  local samples = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', ARGV[9])
  local service, total = -1, 0
  for _, entry in ipairs(samples) do
    total = total + tonumber(entry[2][4])
  end
  if #samples > 0 then
    service = math.floor(total / #samples)
  end
  local next_ms = tonumber(ARGV[8])
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if service >= 0 and first[2] then
    local ran = tonumber(ARGV[2]) - (tonumber(first[2]) - (tonumber(ARGV[3]) - tonumber(ARGV[2])))
    next_ms = math.max(0, service - ran)
  end
  return {reason, live, next_ms, service}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {'ok'}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return refuse('backpressure', KEYS[1])
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return refuse('user_concurrency', KEYS[2])
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if #KEYS >= 6 and redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('XADD', KEYS[5], '*', 't', ARGV[11], 'd', ARGV[12])
  redis.call('EXPIRE', KEYS[5], ARGV[10])
end
if #KEYS >= 9 then
  redis.call('SET', KEYS[7], KEYS[9], 'EX', ARGV[10])
  local id = redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[13], '*', 'j', ARGV[1])
  redis.call('EXPIRE', KEYS[8], ARGV[10])
  redis.call('PUBLISH', KEYS[9], id)
end
if #KEYS >= 11 then
  return {'ok', pick_box(KEYS[10], KEYS[11], tonumber(ARGV[2]), 14)}
end
return {'ok'}
""",
)

# Take the job's lease for one attempt, unless the job's stream is closed (terminal/cancelled)
# or another attempt holds it. Also re-registers the job in its admission sets with a fresh
# deadline, so a job that waited long at the broker is counted while it runs.
# KEYS: lease, done, tier set, user set, watch. ARGV: token, lease ms, job id, deadline ms,
# user ttl ms. Returns {"acquired", watch} | {"done", status} | {"busy", pttl ms}, where watch
# is the transport of a live SSE viewer ("tcp" or "rest") or nil when nobody watches.
ACQUIRE = Script(
    "acquire",
    """
local seen = redis.call('MGET', KEYS[2], KEYS[5])
if seen[1] then
  return {'done', seen[1]}
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy', redis.call('PTTL', KEYS[1])}
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return {'acquired', seen[2]}
""",
)

# Heartbeat of a running attempt: renew the lease if we still hold it, and, when ARGV[6] is 1,
# the admission deadlines too (the worker asks for that once half the admission TTL has gone,
# not on every beat: Redis is billed per command). One MGET reads the cancel flag, the lease
# holder and the viewer's presence.
# KEYS: lease, done, tier set, user set, watch. ARGV: token, lease ms, job id, deadline ms,
# user ttl ms, refresh admission 0|1. Returns {held 0|1, done status or nil, watch or nil}.
RENEW = Script(
    "renew",
    """
local seen = redis.call('MGET', KEYS[2], KEYS[1], KEYS[5])
if seen[2] ~= ARGV[1] then
  return {0, seen[1], seen[3]}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[3])
  redis.call('ZADD', KEYS[4], 'XX', ARGV[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {1, seen[1], seen[3]}
""",
)

# Release the job's lease if `token` holds it (an empty token holds nothing), and its admission
# slots unless the job goes back to the broker for a retry. With KEYS[4], the job succeeded and
# its service time is one more sample of its tier's service stream (capped at ARGV[6] entries):
# one more command where a job ends, which ADMIT's refusals read (`next_slot_s`).
# KEYS: lease, tier set, user set[, tier service samples]. ARGV: token, job id, free slots 0|1[,
# kind, service ms, samples kept]. Returns 1.
RELEASE = Script(
    "release",
    """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
if #KEYS >= 4 then
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[6], '*', 'k', ARGV[4], 'ms', ARGV[5])
end
return 1
""",
)

# Live members of an admission set (expired deadlines dropped first). KEYS: set. ARGV: now ms.
LIVE = Script(
    "live",
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
""",
)

# The reconciler's look at an admission set: drop the members whose deadline passed, and return
# how many it dropped and the (at most ARGV[2]) members with the earliest deadlines, whose jobs
# it then checks in the database. KEYS: set. ARGV: now ms, limit. Returns {dropped, members}.
ADMISSION_SCAN = Script(
    "admission_scan",
    """
local dropped = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return {dropped, members}
""",
)
