--[[ reclaim.lua: take over entries that are due for another attempt.

Two sources, one partition, one consumer group:
 1. failed entries whose backoff has run out (the retry set), claimed by XCLAIM;
 2. entries left pending by a consumer that died: XAUTOCLAIM of entries idle for
    longer than min_idle, except those still waiting out a backoff.
A claimed entry that no longer exists in the stream is acknowledged and dropped
(Redis 6.2 keeps such entries pending forever and XAUTOCLAIM returns them as nil).

KEYS[1] ledger:{pN}:retry:<group>   KEYS[2] ledger:{pN}:attempts   KEYS[3] ledger:{pN}:cursor
KEYS[4..7] ledger:{pN}:critical|high|normal|low
ARGV[1] group   ARGV[2] consumer   ARGV[3] min_idle ms   ARGV[4] count
ARGV[5] levels to autoclaim, as digits 1..4 (e.g. "1234"); "" = retries only
Returns a flat list: first the ms until the earliest retry left in the retry set
is due (0: due now, more than count were; -1: none), then level, entry id,
{field, value, …} for each claimed entry.
]]
local group, consumer, min_idle, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {-1}

local function drop(level, id)
  redis.call('XACK', KEYS[3 + tonumber(level)], group, id)
  redis.call('HDEL', KEYS[2], group .. '|' .. level .. '|' .. id)
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, count)
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local level, id = string.match(member, '^(%d)|(.*)$')
  local stream = KEYS[3 + tonumber(level)]
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id)
  if claimed[1] and claimed[1][2] then
    out[#out + 1] = level; out[#out + 1] = id; out[#out + 1] = claimed[1][2]
  else
    drop(level, id)
  end
end

for level in string.gmatch(ARGV[5], '%d') do
  local stream = KEYS[3 + tonumber(level)]
  local field = group .. '|' .. level
  local start = redis.call('HGET', KEYS[3], field) or '0-0'
  local ok, res = pcall(redis.call, 'XAUTOCLAIM', stream, group, consumer, min_idle, start,
                        'COUNT', count)
  if ok then
    redis.call('HSET', KEYS[3], field, res[1])
    local missing = false
    for _, entry in ipairs(res[2]) do
      if entry and entry[2] then
        if not redis.call('ZSCORE', KEYS[1], level .. '|' .. entry[1]) then
          out[#out + 1] = level; out[#out + 1] = entry[1]; out[#out + 1] = entry[2]
        end
      else
        missing = true
      end
    end
    for _, id in ipairs(res[3] or {}) do redis.call('HDEL', KEYS[2], field .. '|' .. id) end
    if missing then
      -- Redis 6.2: find the vanished entries among this consumer's pending ones.
      local pend = redis.call('XPENDING', stream, group, '-', '+', count, consumer)
      for _, p in ipairs(pend) do
        if not redis.call('XRANGE', stream, p[1], p[1])[1] then drop(level, p[1]) end
      end
    end
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then out[1] = math.max(0, tonumber(nxt[2]) - now) end
return out
