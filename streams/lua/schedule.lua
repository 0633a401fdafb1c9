--[[ schedule.lua: move due delayed tasks of one partition onto their streams.

KEYS[1] ledger:{pN}:scheduled
KEYS[2..5] ledger:{pN}:critical|high|normal|low  (index = 6 - priority)
ARGV[1] task key prefix "ledger:{pN}:task:"   ARGV[2] max tasks to move

Runs when due and never before: a task leaves the set in the same step that
puts it on its stream, so two schedulers can't both move it. A scheduled record
has no TTL (enqueue.lua); it gets its "ttl" here, once its data is on the stream.
Returns {number moved, {task ids due whose record was missing}}: a missing one
leaves the set (nothing could ever run it) but is not counted as moved.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local moved, missing = 0, {}
for _, task_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], task_id)
  local key = ARGV[1] .. task_id
  local f = redis.call('HMGET', key, 'queue_name', 'task_type', 'data', 'priority', 'ttl')
  if f[1] and f[3] then
    local id = redis.call('XADD', KEYS[6 - tonumber(f[4])], '*', 'k', 'task', 'id', task_id,
      'q', f[1], 'ty', f[2], 'd', f[3], 't', now)
    redis.call('HSET', key, 'status', 'queued', 'entry', id)
    redis.call('HDEL', key, 'data', 'ttl')
    if f[5] then redis.call('EXPIRE', key, tonumber(f[5])) end
    moved = moved + 1
  else
    missing[#missing + 1] = task_id
  end
end
return {moved, missing}
