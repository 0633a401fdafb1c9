--[[ enqueue.lua: record a task and put it on its stream, or schedule it.

KEYS[1] ledger:{pN}:<level>       the priority stream
KEYS[2] ledger:{pN}:task:<id>     task status hash
KEYS[3] ledger:{pN}:scheduled     delayed tasks by due time

ARGV[1] task_id   ARGV[2] queue_name   ARGV[3] task_type   ARGV[4] data (msgpack)
ARGV[5] priority  ARGV[6] delay_ms     ARGV[7] fingerprint ("" without a key) ARGV[8] idempotent ("1"/"0")
ARGV[9] ttl (s) of a task record that never finishes (safety net)

A delayed task's data lives only in its record until the scheduler moves it, so
that record has no TTL while it waits (the delay may be longer than the TTL, and
the scheduler may be down): it keeps "ttl" and schedule.lua sets it on the move.

A task id derived from an Idempotency-Key makes a repeat find its hash here:
the first enqueue wins and every repeat gets the same task id back.
Returns {"ok", task_id, entry_id|""} | {"dup", task_id} | {"reused"} | {"exists"}
]]
if redis.call('EXISTS', KEYS[2]) == 1 then
  if ARGV[8] ~= '1' then return {'exists'} end
  if (redis.call('HGET', KEYS[2], 'fingerprint') or '') ~= ARGV[7] then return {'reused'} end
  -- rewritten as it is: a write, so that a WAIT behind this call covers the
  -- first enqueue too (Redis 7.2+ moves a connection's WAIT offset only on writes)
  redis.call('HSET', KEYS[2], 'fingerprint', ARGV[7])
  return {'dup', ARGV[1]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay = tonumber(ARGV[6])
-- no task_id (the key names it), no attempts 0 (absent reads as 0), a fingerprint
-- only with a key: a smaller record while the task waits
local record = {'queue_name', ARGV[2], 'task_type', ARGV[3], 'priority', ARGV[5],
  'enqueued_at', now}
if ARGV[7] ~= '' then record[#record + 1] = 'fingerprint'; record[#record + 1] = ARGV[7] end
local function save(...)  -- one HSET: the common record and what is particular
  for _, v in ipairs({...}) do record[#record + 1] = v end
  redis.call('HSET', KEYS[2], unpack(record))
end
if delay > 0 then
  save('status', 'scheduled', 'data', ARGV[4], 'due_at', now + delay, 'ttl', ARGV[9])
  redis.call('ZADD', KEYS[3], now + delay, ARGV[1])
  return {'ok', ARGV[1], ''}
end
local id = redis.call('XADD', KEYS[1], '*', 'k', 'task', 'id', ARGV[1], 'q', ARGV[2],
  'ty', ARGV[3], 'd', ARGV[4], 't', now)
save('status', 'queued', 'entry', id)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[9]))
return {'ok', ARGV[1], id}
