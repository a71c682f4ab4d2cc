"""The Lua scripts of detached mode's model slots (lib/state/waits.py): take a slot or wait in
line (TAKE_SLOT), give it back (RELEASE_SLOT), keep it (RENEW_SLOT)."""

from __future__ import annotations

from lib.state.scripts.script import Script

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
