"""The Lua scripts: every multi-key atomic step on Redis. Both adapters run these same sources,
so the TCP and Upstash REST paths cannot drift apart."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324


# Scale-out (lib/boxes.py). Each process of each worker box announces itself in the boxes hash:
# field "<box url> <process id>", value "<deadline ms> <jobs running> <box max jobs>". A box's free
# capacity is its max minus the jobs its live processes run, minus the jobs sent to it since its
# last beat (the reservations hash, field = box url: a burst spreads before the next beat).
# `pick_box` picks, among the boxes listed in ARGV[first + 2..] with a live announcement, the one
# with the most free capacity (ties: the (ARGV[first] mod ties + 1)th, a random number from the
# caller), reserves one job on it and returns its URL; false when no listed box is live.
# ARGV[first + 1] is the reservations' TTL (ms).
_PICK_BOX_LUA = """
local function pick_box(boxes, reserved, now, first)
  local raw = redis.call('HGETALL', boxes)
  local cap, used = {}, {}
  for i = 1, #raw, 2 do
    local url = string.match(raw[i], '^(%S+) ')
    local d, r, m = string.match(raw[i + 1], '^(%d+) (%d+) (%d+)$')
    if url and d and tonumber(d) > now then
      used[url] = (used[url] or 0) + tonumber(r)
      cap[url] = math.max(cap[url] or 0, tonumber(m))
    end
  end
  local held = {}
  local flat = redis.call('HGETALL', reserved)
  for i = 1, #flat, 2 do
    held[flat[i]] = tonumber(flat[i + 1]) or 0
  end
  local best, ties = nil, {}
  for i = first + 2, #ARGV do
    local url = ARGV[i]
    if cap[url] then
      local free = cap[url] - used[url] - (held[url] or 0)
      if best == nil or free > best then
        best, ties = free, {url}
      elseif free == best then
        ties[#ties + 1] = url
      end
    end
  end
  if best == nil then
    return false
  end
  local url = ties[(tonumber(ARGV[first]) % #ties) + 1]
  redis.call('HINCRBY', reserved, url, 1)
  redis.call('PEXPIRE', reserved, ARGV[first + 1])
  return url
end
"""

# Pick the box for a re-published job (the reconciler): `pick_box` over the announcements.
# KEYS: boxes, box reservations. ARGV: now ms, random number, reservation ttl ms, box urls...
# Returns the box URL, or false when no listed box is live.
PICK_BOX = Script(
    "pick_box",
    _PICK_BOX_LUA
    + """
return pick_box(KEYS[1], KEYS[2], tonumber(ARGV[1]), 2)
""",
)

# One beat of one worker process: write (or, with an empty value, withdraw) this process's
# announcement and clear its box's reservations (its count of running jobs now includes the jobs
# that were sent to it). Three commands: Redis is billed per command. With ARGV[6] = 1 (every
# tenth beat) it also drops the announcements whose deadline passed and keeps the hash for
# ARGV[4] ms (longer than ten beats), and returns the number of live announcements.
# KEYS: boxes, box reservations. ARGV: field, value, now ms, hash ttl ms, box url, sweep 0|1.
BOX_BEAT = Script(
    "box_beat",
    """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HDEL', KEYS[2], ARGV[5])
if ARGV[6] ~= '1' then
  return false
end
local raw = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #raw, 2 do
  local d = tonumber(string.match(raw[i + 1], '^(%d+) ') or '0')
  if d <= tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], raw[i])
  else
    live = live + 1
  end
end
if live > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return live
""",
)


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
    _PICK_BOX_LUA
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

# Live members of an admission set (expired deadlines dropped first). KEYS: set. ARGV: now ms.
LIVE = Script(
    "live",
    """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
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

# Detached mode: take a slot of a (tier, model) for a job, across every worker process, or queue
# it. Holders are scored by when they lapse (ms; renewed with the job's lease), so a dead
# process's slots heal by themselves. Waiters are in order of arrival: a job joins the line
# behind every job already in it (scored by the time it joined, or just past the last waiter's
# score when that is later, e.g. another box's clock), so no job ever joins ahead of a waiter
# and a waiter's position only counts down. A job takes a slot only when one is free and it is
# among the first `free` waiters (a newcomer: when fewer than `free` wait), so order is kept.
# Each take or wait bumps the job's delivery generation: a wait message carrying an older one is
# stale (a newer message of the job exists) and is dropped, so a job never has two wait chains.
# KEYS: holders, queue, seen, gen, wait stats. ARGV: job id, now ms, hold until ms, limit,
# wait until ms, key ttl ms, generation or '', stats field, user id.
# Returns {"ok", gen, waits} | {"wait", gen, waits, rank} | {"stale", gen}.
TAKE_SLOT = Script(
    "take_slot",
    """
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, member in ipairs(gone) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
end
local gen = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
if ARGV[7] ~= '' and tonumber(ARGV[7]) ~= gen then
  return {'stale', gen}
end
gen = gen + 1
redis.call('HSET', KEYS[4], ARGV[1], gen)
redis.call('PEXPIRE', KEYS[4], ARGV[6])
local waits = tonumber(redis.call('HGET', KEYS[4], ARGV[1] .. ':waits') or '0')
local free = tonumber(ARGV[4]) - redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
  if not rank then
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    rank = 0
    if last[2] then
      rank = redis.call('ZCARD', KEYS[2])
    end
    if rank >= free then
      local score = now
      if last[2] and tonumber(last[2]) >= now then
        score = tonumber(last[2]) + 1
      end
      redis.call('ZADD', KEYS[2], string.format('%.0f', score), ARGV[1])
    end
  end
  if rank >= free then
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
    waits = redis.call('HINCRBY', KEYS[4], ARGV[1] .. ':waits', 1)
    redis.call('HSET', KEYS[4], ARGV[1] .. ':user', ARGV[9])
    redis.call('HINCRBY', KEYS[5], ARGV[8], 1)
    return {'wait', gen, waits, rank}
  end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {'ok', gen, waits}
""",
)

# Detached mode: give a job's slot back, and say which waiters may take the freed slots (the
# first `free` of the queue, with their generation), so the caller wakes them at once. When
# ARGV[4] is 1 the job has ended: its generation and wait count are forgotten.
# KEYS: holders, queue, seen, gen. ARGV: job id, now ms, limit, forget 0|1.
# Returns a flat list {job id, generation, user id, ...}.
RELEASE_SLOT = Script(
    "release_slot",
    """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1], ARGV[1] .. ':waits', ARGV[1] .. ':user')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local out = {}
if free <= 0 then
  return out
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, free - 1)) do
  table.insert(out, member)
  table.insert(out, redis.call('HGET', KEYS[4], member) or '0')
  table.insert(out, redis.call('HGET', KEYS[4], member .. ':user') or '')
end
return out
""",
)

# Detached mode's heartbeat for slot holders: push the lapse of the job's slot forward if it
# still holds one. KEYS: holders. ARGV: job id, hold until ms, key ttl ms. Returns 1 or 0.
RENEW_SLOT = Script(
    "renew_slot",
    """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
""",
)

# Detached mode: the live queue view of a (tier, model) after one of its jobs starts, ends or
# waits. It records what the ETA needs (the job's kind, when a holder started), folds an ended
# job's service time into the moving average of its kind (EWMA, weight ARGV[9]), then walks the
# holders and the first ARGV[7] waiters in order: each waiter takes the slot that frees first
# (a holder's expected end: its start plus its kind's average; a free slot: now), so its ETA is
# that slot's time and the slot then frees after the waiter's own average. Only waiters whose
# position changed, or whose expected start moved by ARGV[10] ms or more (an ETA that merely
# counts down is not news), are returned, and their view stored as "<position> <ahead> <eta_s>
# <at ms>" (GET /api/jobs/<id> counts it down); a job that starts after waiting gets a last
# {0, 0, 0}. Each run bumps the line's version (`seq`), so the caller's writes (QUEUE_EMIT, one
# pipeline) can drop a view that a later run already superseded.
# KEYS: holders, queue, view hash, service hash. ARGV: now ms, limit, op (start|end|wait|''),
# job id, kind, default service ms, max waiters, view ttl ms, EWMA weight, moved ms.
# Returns a flat list {version, job id, position, ahead, eta_s, ...}.
QUEUE_VIEW = Script(
    "queue_view",
    """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local op, job = ARGV[3], ARGV[4]
local out = {redis.call('HINCRBY', KEYS[3], 'seq', 1)}
if op == 'start' then
  if redis.call('HEXISTS', KEYS[3], job .. ':q') == 1 then
    table.insert(out, job)
    table.insert(out, 0)
    table.insert(out, 0)
    table.insert(out, 0)
  end
  redis.call('HDEL', KEYS[3], job .. ':q')
  redis.call('HSET', KEYS[3], job .. ':t0', now, job .. ':k', ARGV[5])
elseif op == 'wait' then
  redis.call('HSET', KEYS[3], job .. ':k', ARGV[5])
elseif op == 'end' then
  local seen = redis.call('HMGET', KEYS[3], job .. ':t0', job .. ':k')
  if seen[1] then
    local ms = math.max(0, now - tonumber(seen[1]))
    local kind = seen[2] or ARGV[5]
    local old = redis.call('HGET', KEYS[4], kind)
    local avg = ms
    if old then
      avg = tonumber(old) + tonumber(ARGV[9]) * (ms - tonumber(old))
    end
    redis.call('HSET', KEYS[4], kind, math.floor(avg))
  end
  redis.call('HDEL', KEYS[3], job .. ':t0', job .. ':k', job .. ':q')
end
redis.call('PEXPIRE', KEYS[3], ARGV[8])
local svc = redis.call('HGETALL', KEYS[4])
local avgs, sum, n = {}, 0, 0
for i = 1, #svc, 2 do
  avgs[svc[i]] = tonumber(svc[i + 1])
  sum = sum + tonumber(svc[i + 1])
  n = n + 1
end
local fallback = tonumber(ARGV[6])
if n > 0 then
  fallback = sum / n
end
local free = {}
for _, holder in ipairs(redis.call('ZRANGE', KEYS[1], 0, limit - 1)) do
  local h = redis.call('HMGET', KEYS[3], holder .. ':t0', holder .. ':k')
  local left = fallback
  if h[1] then
    left = math.max(0, tonumber(h[1]) + (avgs[h[2] or ''] or fallback) - now)
  end
  table.insert(free, left)
end
while #free < limit do
  table.insert(free, 0)
end
local waiters = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[7]) - 1)
for i, waiter in ipairs(waiters) do
  local w = redis.call('HMGET', KEYS[3], waiter .. ':k', waiter .. ':q')
  local first = 1
  for j = 2, #free do
    if free[j] < free[first] then
      first = j
    end
  end
  local eta = math.ceil(free[first] / 1000)
  free[first] = free[first] + (avgs[w[1] or ''] or fallback)
  local changed = true
  if w[2] then
    local p, _, e, at = string.match(w[2], '^(%S+) (%S+) (%S+) (%S+)')
    local moved = math.abs(tonumber(at) + 1000 * tonumber(e) - now - 1000 * eta)
    changed = tonumber(p) ~= i or moved >= tonumber(ARGV[10])
  end
  if changed then
    redis.call('HSET', KEYS[3], waiter .. ':q', i .. ' ' .. (i - 1) .. ' ' .. eta .. ' ' .. now)
    table.insert(out, waiter)
    table.insert(out, i)
    table.insert(out, i - 1)
    table.insert(out, eta)
  end
end
return out
""",
)

# Detached mode: write one `queue` event of a QUEUE_VIEW run to the job's stream, unless the
# stream is closed or a later run's view was written already (the runs' writes may arrive out of
# order across worker threads and processes). Then PUBLISH as EMIT does.
# KEYS: stream, done, notify channel, owner, the job's view version. ARGV: version, version ttl
# ms, events ttl s, publish 0|1, data. Returns the entry id, or false when nothing was written.
QUEUE_EMIT = Script(
    "queue_emit",
    """
local seen = redis.call('MGET', KEYS[2], KEYS[5])
if seen[1] or (seen[2] and tonumber(seen[2]) >= tonumber(ARGV[1])) then
  return false
end
redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2])
local id = redis.call('XADD', KEYS[1], '*', 't', 'queue', 'd', ARGV[5])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] == '1' then
  redis.call('PUBLISH', KEYS[3], id)
  local owner = redis.call('GET', KEYS[4])
  if owner then
    redis.call('PUBLISH', owner, id)
  end
end
return id
""",
)

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

ALL = (
    ADMIT,
    ACQUIRE,
    RENEW,
    RELEASE,
    EMIT,
    LIVE,
    HOLD_STREAM,
    ADMISSION_SCAN,
    USER_JOB,
    PICK_BOX,
    BOX_BEAT,
    TAKE_SLOT,
    RELEASE_SLOT,
    RENEW_SLOT,
    QUEUE_VIEW,
    QUEUE_EMIT,
    COUNT_UPLOAD,
    OPEN_VIEWER,
    LEAVE_VIEWER,
)
