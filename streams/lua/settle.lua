--[[ settle.lua: record the outcome of processed entries of one partition.

Acknowledging, counting and updating task status happen in one step, so an
entry is never acked without its outcome, nor dead-lettered twice.

KEYS[1] ledger:{pN}:attempts     KEYS[2] ledger:{pN}:stats
KEYS[3] ledger:{pN}:retry:<group>   KEYS[4] ledger:{pN}:dead
KEYS[5..8] ledger:{pN}:critical|high|normal|low
KEYS[8+i] ledger:{pN}:task:<id> of entry i (KEYS[1] when not a task), i = 1..n
KEYS[8+n+2j-1] ledger:{pN}:lat:<queue j>   KEYS[8+n+2j] ledger:{pN}:tput:<queue j>, j = 1..m
ARGV[1] group   ARGV[2] seconds to keep a finished task's status
ARGV[3] m: the number of queues with latency keys (every queue of an "ok" entry)
ARGV[4] consumer: an entry no longer pending for it (taken over meanwhile) is left
        to the consumer that holds it now, so a late result never overwrites its
        outcome
ARGV[4+j] queue j (j = 1..m), whose latency keys are above
then 6 values per entry i:  op ("ok"|"retry"|"dead"|"ack"|"skip"), level (1..4 = KEYS[5..8]),
  entry id, queue name, number (ok: latency ms; retry: delay ms; dead: attempts), error
Returns the number of entries settled; an error, with nothing written, when an
"ok" entry's queue has no latency keys, or the keys do not match the queues or
the number of entries.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, ttl = ARGV[1], tonumber(ARGV[2])
local m, consumer = tonumber(ARGV[3]), ARGV[4]
local bucket = math.floor(now / 10000)
local n = (#ARGV - 4 - m) / 6
local first = 4 + m  -- ARGV index before the first entry's values

-- checked before anything is written: a script is not rolled back
if n ~= math.floor(n) or #KEYS ~= 8 + n + 2 * m then
  return redis.error_reply('settle.lua: KEYS and ARGV do not match')
end
local declared = {}
for j = 1, m do
  local queue = ARGV[4 + j]
  declared[queue] = true
  if string.sub(KEYS[8 + n + 2 * j - 1], -#queue - 5) ~= ':lat:' .. queue
      or string.sub(KEYS[8 + n + 2 * j], -#queue - 6) ~= ':tput:' .. queue then
    return redis.error_reply('settle.lua: KEYS do not hold the latency keys of ' .. queue)
  end
end
for i = 1, n do
  local b = first + (i - 1) * 6
  if ARGV[b + 1] == 'ok' and not declared[ARGV[b + 4]] then
    return redis.error_reply('settle.lua: no latency keys for queue ' .. ARGV[b + 4])
  end
end

-- which entries are still ours: one XPENDING per level, not one per entry
local ids_by_level, mine = {}, {}
for i = 1, n do
  local b = first + (i - 1) * 6
  local level = tonumber(ARGV[b + 2])
  ids_by_level[level] = ids_by_level[level] or {}
  table.insert(ids_by_level[level], ARGV[b + 3])
end
for level, ids in pairs(ids_by_level) do
  mine[level] = owned(KEYS[4 + level], group, consumer, ids)
end

-- acks, counters and latencies are gathered and written once per call
local acks, forget, counts, lats = {}, {}, {}, {}
local function ack(level, id)
  acks[level] = acks[level] or {}
  table.insert(acks[level], id)
  table.insert(forget, group .. '|' .. level .. '|' .. id)
end
local function count(field) counts[field] = (counts[field] or 0) + 1 end

for i = 1, n do
  local b = first + (i - 1) * 6
  local op, level, id, queue, num, err =
    ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5]), ARGV[b + 6]
  local stream, tkey = KEYS[4 + level], KEYS[8 + i]
  local is_task = tkey ~= KEYS[1]
  if not mine[level][id] then
    op = 'skip'  -- not ours any more (or already settled): nothing to record
  end
  if op == 'ok' then
    ack(level, id)
    count('processed:' .. queue)
    lats[queue] = lats[queue] or {}
    table.insert(lats[queue], num)
    if is_task then
      redis.call('HSET', tkey, 'status', 'completed', 'finished_at', now, 'last_error', '')
      redis.call('HDEL', tkey, 'retry_at')
      redis.call('EXPIRE', tkey, ttl)
    end
  elseif op == 'ack' then
    ack(level, id)
  elseif op == 'retry' then
    redis.call('ZADD', KEYS[3], now + num, level .. '|' .. id)
    count('failed:' .. queue)
    count('retried:' .. queue)
    if is_task then
      redis.call('HSET', tkey, 'status', 'retrying', 'last_error', err, 'retry_at', now + num)
    end
  elseif op == 'dead' then
    local fields = {}
    local entry = redis.call('XRANGE', stream, id, id)
    if entry[1] then
      for _, v in ipairs(entry[1][2]) do fields[#fields + 1] = v end
    end
    for _, v in ipairs({'_stream', stream, '_id', id, '_group', group, '_error', err,
                        '_attempts', num, '_at', now, '_queue', queue}) do
      fields[#fields + 1] = v
    end
    redis.call('XADD', KEYS[4], '*', unpack(fields))
    ack(level, id)
    redis.call('ZREM', KEYS[3], level .. '|' .. id)
    count('failed:' .. queue)
    count('dead:' .. queue)
    if is_task then
      redis.call('HSET', tkey, 'status', 'failed', 'finished_at', now, 'last_error', err)
      redis.call('EXPIRE', tkey, ttl)
    end
  end
end

local function each_slice(list, f)  -- unpack() has a stack limit: 500 at a time
  for i = 1, #list, 500 do f(unpack(list, i, math.min(i + 499, #list))) end
end
for level, ids in pairs(acks) do
  each_slice(ids, function(...) redis.call('XACK', KEYS[4 + level], group, ...) end)
end
each_slice(forget, function(...) redis.call('HDEL', KEYS[1], ...) end)
for field, k in pairs(counts) do redis.call('HINCRBY', KEYS[2], field, k) end
-- recent latencies (percentiles) and 10-second throughput buckets (rate)
for j = 1, m do
  local values = lats[ARGV[4 + j]]
  if values then
    local lat, tput = KEYS[8 + n + 2 * j - 1], KEYS[8 + n + 2 * j]
    each_slice(values, function(...) redis.call('LPUSH', lat, ...) end)
    redis.call('LTRIM', lat, 0, 511)
    redis.call('HINCRBY', tput, bucket, #values)
    redis.call('HDEL', tput, bucket - 12)
  end
end
return n
