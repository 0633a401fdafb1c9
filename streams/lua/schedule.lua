--[[ schedule.lua: move due delayed tasks of one partition onto their streams.

Two calls per round, so that every key the script touches is declared in KEYS
(Redis Cluster): which tasks are due is only known from the schedule, and their
records are keys.
 1. ARGV[1] "due": returns the ids of up to ARGV[2] tasks due now (reads KEYS[1] only).
 2. ARGV[1] "move": moves the tasks ARGV[2..] whose records are KEYS[6..].

KEYS[1] ledger:{pN}:scheduled
KEYS[2..5] ledger:{pN}:critical|high|normal|low  (index = 6 - priority)
KEYS[5+i] ledger:{pN}:task:<ARGV[1+i]>   ("move" only) the record of task i
ARGV[1] "due" | "move"
ARGV[2] "due": max tasks to return
ARGV[1+i] "move": task id i, as step 1 returned it

Runs when due and never before: a task moves only if it is still in the set and
due by Redis's clock at the move, and it leaves the set in the same step that
puts it on its stream, so two schedulers can't both move it (the second one
finds it gone and skips it). A scheduled record has no TTL (enqueue.lua); it
gets its "ttl" here, once its data is on the stream.
"due" returns {task ids}; "move" returns {number moved, {task ids due whose
record was missing}}: a missing one leaves the set (nothing could ever run it)
but is not counted as moved. Ids skipped (gone or not due) are in neither.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'due' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
end
if ARGV[1] ~= 'move' or #KEYS ~= 5 + #ARGV - 1 then
  return redis.error_reply('schedule.lua: "due" | "move" with one task key per task id')
end
for i = 2, #ARGV do  -- checked before anything is written: a script is not rolled back
  local suffix = ':task:' .. ARGV[i]
  if string.sub(KEYS[4 + i], -#suffix) ~= suffix then
    return redis.error_reply('schedule.lua: KEYS[' .. (4 + i) .. '] is not the record of ' .. ARGV[i])
  end
end
local moved, missing = 0, {}
for i = 2, #ARGV do
  local task_id, key = ARGV[i], KEYS[4 + i]
  local score = redis.call('ZSCORE', KEYS[1], task_id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], task_id)
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
end
return {moved, missing}
