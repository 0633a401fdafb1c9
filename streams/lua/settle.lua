--[[ settle.lua: record the outcome of processed entries of one partition.

Acknowledging, scheduling a retry, dead-lettering and updating task status happen
in one step, so an entry is never acked without its outcome, nor dead-lettered
twice. The queue statistics (counters, latencies, throughput) are not written
here: the worker adds up what this returns and writes them once per interval
(``worker.Stats``).

KEYS[1] ledger:{pN}:attempts     KEYS[2] ledger:{pN}:retry:<group>
KEYS[3] ledger:{pN}:dead         KEYS[4..7] ledger:{pN}:critical|high|normal|low
KEYS[8] ledger:{pN}:outbox
KEYS[8+i] ledger:{pN}:task:<id> of entry i (KEYS[1] when not a task), i = 1..n
KEYS[8+n+i] ledger:{pN}:children:<id> of entry i (KEYS[1] when not a task)
ARGV[1] group   ARGV[2] seconds to keep a finished task's status
ARGV[3] consumer: an entry no longer pending for it (taken over meanwhile) is left
        to the consumer that holds it now, so a late result never overwrites its
        outcome
ARGV[4] the idempotency window (s): when ARGV[2] is shorter, a task enqueued with
        an Idempotency-Key (its record has a fingerprint) keeps its record for the
        window set at enqueue, so that a repeat still finds it, and for at least
        ARGV[2] after it finished
then 6 values per entry i:  op ("ok"|"retry"|"dead"|"ack"|"skip"), level (1..4 = KEYS[4..7]),
  entry id, queue name, number (ok: latency ms; retry: delay ms; dead: attempts), error
A task that completes or is dead-lettered with tasks waiting for it
(``deps.lua``) moves its children set into an outbox entry in the same step, so
its children are told of its end however the process dies afterwards.
Returns per entry 1 if its outcome was recorded, 0 if not (skipped, or no longer
pending for this consumer), then the number of outbox entries written; an error,
with nothing written, when the keys do not match the number of entries.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, ttl, consumer = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local short = ttl < tonumber(ARGV[4])
local first = 4  -- ARGV index before the first entry's values
local n = (#ARGV - first) / 6

-- checked before anything is written: a script is not rolled back
if n ~= math.floor(n) or #KEYS ~= 8 + 2 * n then
  return redis.error_reply('settle.lua: KEYS and ARGV do not match')
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
  mine[level] = owned(KEYS[3 + level], group, consumer, ids)
end

-- acks are gathered and written once per call
local acks, forget, out, told = {}, {}, {}, 0
local function keep(tkey)  -- a finished task's record: kept ttl seconds (see ARGV[4])
  if short and (redis.call('HGET', tkey, 'fingerprint') or '') ~= ''
      and redis.call('TTL', tkey) >= ttl then
    return
  end
  redis.call('EXPIRE', tkey, ttl)
end
local function ack(level, id)
  acks[level] = acks[level] or {}
  table.insert(acks[level], id)
  table.insert(forget, group .. '|' .. level .. '|' .. id)
end

for i = 1, n do
  local b = first + (i - 1) * 6
  local op, level, id, queue, num, err =
    ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5]), ARGV[b + 6]
  local stream, tkey, children = KEYS[3 + level], KEYS[8 + i], KEYS[8 + n + i]
  local is_task = tkey ~= KEYS[1]
  out[i] = 0
  if not mine[level][id] then
    op = 'skip'  -- not ours any more (or already settled): nothing to record
  end
  if op == 'ok' then
    ack(level, id)
    out[i] = 1
    if is_task then
      redis.call('HSET', tkey, 'status', 'completed', 'finished_at', now, 'last_error', '',
                 'retry_at', '')
      keep(tkey)
      told = told + tell_children(KEYS[8], string.match(tkey, ':task:(.*)$'), children,
                                  'completed', '')
    end
  elseif op == 'ack' then
    ack(level, id)
    out[i] = 1
  elseif op == 'retry' then
    redis.call('ZADD', KEYS[2], now + num, level .. '|' .. id)
    out[i] = 1
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
    redis.call('XADD', KEYS[3], '*', unpack(fields))
    ack(level, id)
    redis.call('ZREM', KEYS[2], level .. '|' .. id)
    out[i] = 1
    if is_task then
      redis.call('HSET', tkey, 'status', 'failed', 'finished_at', now, 'last_error', err)
      keep(tkey)
      told = told + tell_children(KEYS[8], string.match(tkey, ':task:(.*)$'), children,
                                  'failed', err)
    end
  end
end

local function each_slice(list, f)  -- unpack() has a stack limit: 500 at a time
  for i = 1, #list, 500 do f(unpack(list, i, math.min(i + 499, #list))) end
end
for level, ids in pairs(acks) do
  each_slice(ids, function(...) redis.call('XACK', KEYS[3 + level], group, ...) end)
end
each_slice(forget, function(...) redis.call('HDEL', KEYS[1], ...) end)
out[n + 1] = told
return out
