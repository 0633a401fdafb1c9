--[[ settle.lua: record the outcome of processed entries of one partition.

Acknowledging, scheduling a retry, dead-lettering and updating task status happen
in one step, so an entry is never acked without its outcome, nor dead-lettered
twice. The queue statistics (counters, latencies, throughput) are not written
here: the worker adds up what this returns and writes them once per interval
(``worker.Stats``).

A completed task with no Idempotency-Key and no parents leaves its hash (~460
bytes) for one field of the done bucket the worker names for it
(``streams.finished``: "enqueued|started-enqueued|finished-enqueued|attempts|
due-enqueued|queue|type", numbers in base 36, times in ms), which the status API
reads once the hash is gone. A task with a key keeps its hash: it is the
idempotency record a repeat must find; one with parents keeps the parents it names.

KEYS[1] ledger:{pN}:attempts     KEYS[2] ledger:{pN}:retry:<group>
KEYS[3] ledger:{pN}:dead         KEYS[4..7] ledger:{pN}:critical|high|normal|low
KEYS[8] ledger:{pN}:outbox       KEYS[9] ledger:{pN}:done (the index of done buckets)
KEYS[9+i] ledger:{pN}:task:<id> of entry i (KEYS[1] when not a task), i = 1..n
KEYS[9+n+i] ledger:{pN}:children:<id> of entry i (KEYS[1] when not a task)
KEYS[9+2n+i] the done bucket entry i goes to if it completes (KEYS[1] when not a task)
ARGV[1] group   ARGV[2] seconds to keep a finished task's status
ARGV[3] consumer: an entry no longer pending for it (taken over meanwhile) is left
        to the consumer that holds it now, so a late result never overwrites its
        outcome
ARGV[4] the idempotency window (s): when ARGV[2] is shorter, a task enqueued with
        an Idempotency-Key (its record has a fingerprint) keeps its record for the
        window set at enqueue, so that a repeat still finds it, and for at least
        ARGV[2] after it finished
ARGV[5] the buckets' family (its name in the index)   ARGV[6] when the family may
        be dropped (ms, its score in the index)   ARGV[7] a new bucket's expiry (ms),
        a safety net
then 7 values per entry i:  op ("ok"|"retry"|"dead"|"ack"|"skip"), level (1..4 = KEYS[4..7]),
  entry id, queue name, number (ok: latency ms; retry: delay ms; dead: attempts), error,
  attempt (1: a fresh delivery, for which begin.lua did not run: no attempts field to
  forget, and it started when it was delivered, which XPENDING tells)
A task that completes or is dead-lettered with tasks waiting for it
(``deps.lua``) moves its children set into an outbox entry in the same step, so
its children are told of its end however the process dies afterwards.
Returns per entry 1 if its outcome was recorded, 0 if not (skipped, or no longer
pending for this consumer), then the number of outbox entries written, then the
most fields a done bucket written to now holds (0: none written); an error,
with nothing written, when the keys do not match the number of entries.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, ttl, consumer = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local short = ttl < tonumber(ARGV[4])
local first, per = 7, 7  -- ARGV index before the first entry's values; values per entry
local n = (#ARGV - first) / per

-- checked before anything is written: a script is not rolled back
if n ~= math.floor(n) or #KEYS ~= 9 + 3 * n then
  return redis.error_reply('settle.lua: KEYS and ARGV do not match')
end

-- which entries are still ours: one XPENDING per level, not one per entry
local ids_by_level, mine = {}, {}
for i = 1, n do
  local b = first + (i - 1) * per
  local level = tonumber(ARGV[b + 2])
  ids_by_level[level] = ids_by_level[level] or {}
  table.insert(ids_by_level[level], ARGV[b + 3])
end
for level, ids in pairs(ids_by_level) do
  mine[level] = owned(KEYS[3 + level], group, consumer, ids)
end

-- acks are gathered and written once per call
local acks, forget, out, told, added = {}, {}, {}, 0, {}
local function keep(tkey)  -- a finished task's record: kept ttl seconds (see ARGV[4])
  if short and (redis.call('HGET', tkey, 'fingerprint') or '') ~= ''
      and redis.call('TTL', tkey) >= ttl then
    return
  end
  redis.call('EXPIRE', tkey, ttl)
end
-- a task's status, one HSET; started: when a fresh delivery was read, else nil
-- (begin.lua wrote it)
local function record(tkey, started, attempts, status, ...)
  local fields = {'status', status, 'attempts', attempts, ...}
  if started then fields[#fields + 1] = 'started_at'; fields[#fields + 1] = started end
  redis.call('HSET', tkey, unpack(fields))
end
-- a uuid as its 16 bytes (a hash field of 24 bytes instead of 40), any other id as it is
local UUID = '^' .. string.rep('[0-9a-f]', 8) .. '%-' .. string.rep('[0-9a-f]', 4) .. '%-'
  .. string.rep('[0-9a-f]', 4) .. '%-' .. string.rep('[0-9a-f]', 4) .. '%-'
  .. string.rep('[0-9a-f]', 12) .. '$'
local function packed_id(task_id)
  if not string.match(task_id, UUID) then return task_id end
  return (string.gsub(string.gsub(task_id, '-', ''), '%x%x',
                      function(h) return string.char(tonumber(h, 16)) end))
end
-- a whole number >= 0 in base 36 (a time in ms: 8 characters instead of 13)
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  n = math.max(0, math.floor(n))
  local out = ''
  repeat
    local r = n % 36
    out = string.sub(DIGITS, r + 1, r + 1) .. out
    n = math.floor(n / 36)
  until n == 0
  return out
end
-- a completed task's hash becomes one field of the done bucket, if it may (see above)
local function compact(tkey, dkey, task_id, started, attempts)
  if dkey == KEYS[1] then return false end
  local f = redis.call('HMGET', tkey, 'fingerprint', 'depends_on', 'enqueued_at',
                       'started_at', 'due_at', 'queue_name', 'task_type')
  if (f[1] or '') ~= '' or (f[2] or '') ~= '' or not tonumber(f[3]) or not f[6] then
    return false
  end
  local enq = tonumber(f[3])
  local due = tonumber(f[5] or '')
  redis.call('HSET', dkey, packed_id(task_id), table.concat({b36(enq),
    b36((started or tonumber(f[4]) or now) - enq), b36(now - enq), b36(attempts),
    due and b36(due - enq) or '', f[6], f[7] or ''}, '|'))
  redis.call('DEL', tkey)
  added[dkey] = (added[dkey] or 0) + 1
  return true
end
local function ack(level, id, attempt)
  acks[level] = acks[level] or {}
  table.insert(acks[level], id)
  if attempt ~= 1 then table.insert(forget, group .. '|' .. level .. '|' .. id) end
end

for i = 1, n do
  local b = first + (i - 1) * per
  local op, level, id, queue, num, err, attempt = ARGV[b + 1], tonumber(ARGV[b + 2]),
    ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5]), ARGV[b + 6], tonumber(ARGV[b + 7])
  local stream, tkey, children = KEYS[3 + level], KEYS[9 + i], KEYS[9 + n + i]
  local dkey = KEYS[9 + 2 * n + i]
  local is_task = tkey ~= KEYS[1]
  out[i] = 0
  local started = nil
  if not mine[level][id] then
    op = 'skip'  -- not ours any more (or already settled): nothing to record
  elseif attempt == 1 then
    started = now - mine[level][id]
  end
  if op == 'ok' then
    ack(level, id, attempt)
    out[i] = 1
    if is_task then
      local task_id = string.match(tkey, ':task:(.*)$')
      if not compact(tkey, dkey, task_id, started, attempt) then
        record(tkey, started, attempt, 'completed', 'finished_at', now, 'last_error', '',
               'retry_at', '')
        keep(tkey)
      end
      told = told + tell_children(KEYS[8], task_id, children, 'completed', '')
    end
  elseif op == 'ack' then
    ack(level, id, attempt)
    out[i] = 1
  elseif op == 'retry' then
    redis.call('ZADD', KEYS[2], now + num, level .. '|' .. id)
    out[i] = 1
    if is_task then
      record(tkey, started, attempt, 'retrying', 'last_error', err, 'retry_at', now + num)
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
    ack(level, id, attempt)
    redis.call('ZREM', KEYS[2], level .. '|' .. id)
    out[i] = 1
    if is_task then
      record(tkey, started, num, 'failed', 'finished_at', now, 'last_error', err)
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
-- each bucket written: how full (the worker splits a family whose buckets fill up,
-- ``streams.finished``); a new one gets its expiry and its family a place in the index
local longest, fresh = 0, false
for dkey, count in pairs(added) do
  local len = redis.call('HLEN', dkey)
  if len == count then
    redis.call('PEXPIREAT', dkey, ARGV[7])
    fresh = true
  end
  longest = math.max(longest, len)
end
if fresh then redis.call('ZADD', KEYS[9], 'NX', ARGV[6], ARGV[5]) end
out[n + 1] = told
out[n + 2] = longest
return out
