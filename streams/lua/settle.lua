--[[ settle.lua: record the outcome of processed entries of one partition.

Acknowledging, counting and updating task status happen in one step, so an
entry is never acked without its outcome, nor dead-lettered twice.

KEYS[1] ledger:{pN}:attempts     KEYS[2] ledger:{pN}:stats
KEYS[3] ledger:{pN}:retry:<group>   KEYS[4] ledger:{pN}:dead
KEYS[5..8] ledger:{pN}:critical|high|normal|low
KEYS[8+i] ledger:{pN}:task:<id> of entry i (KEYS[1] when not a task)
ARGV[1] group   ARGV[2] seconds to keep a finished task's status   ARGV[3] "ledger:{pN}:"
ARGV[4] consumer: an entry no longer pending for it (taken over meanwhile) is left
        to the consumer that holds it now, so a late result never overwrites its
        outcome
then 6 values per entry i:  op ("ok"|"retry"|"dead"|"ack"|"skip"), level (1..4 = KEYS[5..8]),
  entry id, queue name, number (ok: latency ms; retry: delay ms; dead: attempts), error
Returns the number of entries settled.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, ttl = ARGV[1], tonumber(ARGV[2])
local prefix, consumer = ARGV[3], ARGV[4]
local bucket = math.floor(now / 10000)
local n = (#ARGV - 4) / 6
for i = 1, n do
  local b = 4 + (i - 1) * 6
  local op, level, id, queue, num, err =
    ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], tonumber(ARGV[b + 5]), ARGV[b + 6]
  local stream, tkey = KEYS[4 + level], KEYS[8 + i]
  local is_task = tkey ~= KEYS[1]
  if not redis.call('XPENDING', stream, group, id, id, 1, consumer)[1] then
    op = 'skip'
  end
  if op == 'skip' then
    -- not ours any more (or already settled): nothing to record
  elseif op == 'ok' then
    redis.call('XACK', stream, group, id)
    redis.call('HDEL', KEYS[1], group .. '|' .. level .. '|' .. id)
    redis.call('HINCRBY', KEYS[2], 'processed:' .. queue, 1)
    -- recent latencies (percentiles) and 10-second throughput buckets (rate)
    local lat, tput = prefix .. 'lat:' .. queue, prefix .. 'tput:' .. queue
    redis.call('LPUSH', lat, num)
    redis.call('LTRIM', lat, 0, 511)
    redis.call('HINCRBY', tput, bucket, 1)
    redis.call('HDEL', tput, bucket - 12)
    if is_task then
      redis.call('HSET', tkey, 'status', 'completed', 'finished_at', now, 'last_error', '')
      redis.call('HDEL', tkey, 'retry_at')
      redis.call('EXPIRE', tkey, ttl)
    end
  elseif op == 'ack' then
    redis.call('XACK', stream, group, id)
    redis.call('HDEL', KEYS[1], group .. '|' .. level .. '|' .. id)
  elseif op == 'retry' then
    redis.call('ZADD', KEYS[3], now + num, level .. '|' .. id)
    redis.call('HINCRBY', KEYS[2], 'failed:' .. queue, 1)
    redis.call('HINCRBY', KEYS[2], 'retried:' .. queue, 1)
    if is_task then
      redis.call('HSET', tkey, 'status', 'retrying', 'last_error', err, 'retry_at', now + num)
    end
  else
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
    redis.call('XACK', stream, group, id)
    redis.call('HDEL', KEYS[1], group .. '|' .. level .. '|' .. id)
    redis.call('ZREM', KEYS[3], level .. '|' .. id)
    redis.call('HINCRBY', KEYS[2], 'failed:' .. queue, 1)
    redis.call('HINCRBY', KEYS[2], 'dead:' .. queue, 1)
    if is_task then
      redis.call('HSET', tkey, 'status', 'failed', 'finished_at', now, 'last_error', err)
      redis.call('EXPIRE', tkey, ttl)
    end
  end
end
return n
