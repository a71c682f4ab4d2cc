"""The Lua scripts of detached mode's live queue view (lib/state/queue_view.py): positions and
ETAs (QUEUE_VIEW) and the `queue` events that carry them (QUEUE_EMIT)."""

from __future__ import annotations

from lib.state.scripts.script import Script

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
