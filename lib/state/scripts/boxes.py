"""The Lua scripts of scale-out (lib/boxes.py): worker boxes' announcements and the pick of a box
with room; `PICK_BOX_LUA` is the `pick_box` function that ADMIT runs too."""

from __future__ import annotations

from lib.state.scripts.script import Script

# Scale-out (lib/boxes.py). Each process of each worker box announces itself in the boxes hash:
# field "<box url> <process id>", value "<deadline ms> <jobs running> <box max jobs>". A box's free
# capacity is its max minus the jobs its live processes run, minus the jobs sent to it since its
# last beat (the reservations hash, field = box url: a burst spreads before the next beat).
# `pick_box` picks, among the boxes listed in ARGV[first + 2..] with a live announcement, the one
# with the most free capacity (ties: the (ARGV[first] mod ties + 1)th, a random number from the
# caller), reserves one job on it and returns its URL; false when no listed box is live.
# ARGV[first + 1] is the reservations' TTL (ms).
PICK_BOX_LUA = """
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
    PICK_BOX_LUA
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
