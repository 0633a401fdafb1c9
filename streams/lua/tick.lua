--[[ tick.lua: recurring schedules (streams/schedules.py): store them, claim their ticks.

Every key lives under one hash tag, ledger:{sched}:… (one Cluster slot):
  ledger:{sched}:schedules          zset  <name> by next_run_at (ms)
  ledger:{sched}:schedule:<name>    hash  cron timezone queue_name task_type data priority
                                          next_run_at last_run_at last_task_id created_at updated_at
  ledger:{sched}:firing             set   names with a claimed tick not yet enqueued
  ledger:{sched}:firing:<name>      hash  task_id tick queue_name task_type data priority
  ledger:{sched}:schedule-stats     hash  fired -> ticks fired (enqueued and recorded)

The cron math is the caller's (Python); this script only compares and sets, so
a tick is claimed once: "claim" moves next_run_at from the tick the caller saw
to the one it computed, and only if it still holds that tick. The claimed task
(its id derived from the name and the tick) is kept in firing:<name> until
"done": its enqueue is a second step (the task's partition is another slot) and
idempotent, so a scheduler that dies between the two leaves the marker for any
scheduler to finish.

ARGV[1] is the mode:
 "due"    KEYS schedules, firing; ARGV[2] max names
          -> {now_ms, {names due}, {names firing}}
 "put"    KEYS schedules, schedule:<name>; ARGV[2] name, ARGV[3] next_run_at,
          ARGV[4..] field, value pairs -> 1 created | 0 replaced
 "remove" KEYS schedules, schedule:<name>; ARGV[2] name -> 1 | 0 (none)
 "claim"  KEYS schedules, schedule:<name>, firing, firing:<name>;
          ARGV[2] name, ARGV[3] tick, ARGV[4] next tick, ARGV[5] task id
          -> "ok" | "stale" (not at that tick, or gone) | "busy" (an earlier tick unfinished)
 "done"   KEYS schedule:<name>, firing, firing:<name>, schedule-stats;
          ARGV[2] name, ARGV[3] task id -> 1 | 0 (not that firing: already done)
]]
local mode = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mode == 'due' then
  return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2])),
    redis.call('SMEMBERS', KEYS[2])}
end
if mode == 'put' then
  local old = redis.call('HMGET', KEYS[2], 'created_at', 'last_run_at', 'last_task_id')
  local created = old[1] == false
  redis.call('DEL', KEYS[2])
  local fields = {'next_run_at', ARGV[3], 'updated_at', now, 'created_at', old[1] or now}
  if old[2] then fields[#fields + 1] = 'last_run_at'; fields[#fields + 1] = old[2] end
  if old[3] then fields[#fields + 1] = 'last_task_id'; fields[#fields + 1] = old[3] end
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[2])
  if created then return 1 end
  return 0
end
if mode == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return redis.call('DEL', KEYS[2])
end
if mode == 'claim' then
  if redis.call('HGET', KEYS[2], 'next_run_at') ~= ARGV[3] then return 'stale' end
  if redis.call('EXISTS', KEYS[4]) == 1 then return 'busy' end
  local f = redis.call('HMGET', KEYS[2], 'queue_name', 'task_type', 'data', 'priority')
  redis.call('HSET', KEYS[4], 'task_id', ARGV[5], 'tick', ARGV[3], 'queue_name', f[1],
    'task_type', f[2], 'data', f[3], 'priority', f[4], 'claimed_at', now)
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('HSET', KEYS[2], 'next_run_at', ARGV[4])
  redis.call('ZADD', KEYS[1], tonumber(ARGV[4]), ARGV[2])
  return 'ok'
end
if mode == 'done' then
  if redis.call('HGET', KEYS[3], 'task_id') ~= ARGV[3] then
    if redis.call('EXISTS', KEYS[3]) == 0 then  -- a marker with no record: nothing to finish
      redis.call('SREM', KEYS[2], ARGV[2])
    end
    return 0
  end
  local tick = redis.call('HGET', KEYS[3], 'tick')
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[2], ARGV[2])
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'last_run_at', tick, 'last_task_id', ARGV[3])
  end
  redis.call('HINCRBY', KEYS[4], 'fired', 1)
  return 1
end
return redis.error_reply('tick.lua: unknown mode ' .. tostring(mode))
