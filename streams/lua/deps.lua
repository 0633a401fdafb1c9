--[[ deps.lua: tasks that wait for other tasks, and cancellation.

A task enqueued with depends_on is "waiting" until every parent completed; a
parent that fails or is cancelled cancels it. Parents and children may live in
different partitions (Cluster nodes), so nothing here spans two partitions:
  "create"  (child's partition) the waiting record, the set of parents it awaits
  "link"    (each parent's partition) the child joins the parent's children set,
            unless the parent ended already: then its end is answered at once
  "arm"     (child's partition) the answers of "link" are applied; from now on an
            empty set of awaited parents releases the task
  a parent's end (settle.lua, or "cancel") moves its children set into one entry
  of its partition's outbox stream, in the same step as the end itself;
  "take"/"done" read and acknowledge outbox entries (consumer group "release"),
  and "release" (each child's partition) applies one parent's end to children.
Every step is idempotent: a child forgets a parent (SREM) once, a waiting task
is released or cancelled once, so an outbox entry handled twice (its consumer
died before "done") changes nothing the second time.

KEYS of "create", "arm", "release", "cancel", "take", "done" (one partition):
  KEYS[1] ledger:{T}:stats   KEYS[2] ledger:{T}:waiting   KEYS[3] ledger:{T}:scheduled
  KEYS[4] ledger:{T}:outbox  KEYS[5..8] ledger:{T}:critical|high|normal|low
  then ("create", "arm", "release", "cancel") for each task i = 0, 1, ...:
  KEYS[9+3i] its record, KEYS[10+3i] its deps set, KEYS[11+3i] its children set
KEYS of "link": for each parent i, KEYS[2i-1] its record, KEYS[2i] its children set

ARGV:
  "create", task_id, queue, task_type, data, priority, delay_ms, fingerprint,
            idempotent ("1"/"0"), ttl (s), parent ids...
      -> {"ok"} | {"dup", status, armed} | {"reused"} | {"exists"}
  "link", child_id, parent ids...      -> per parent: "wait" | "completed" | "failed"
                                          | "cancelled" | "gone" (no record)
  "arm", task_id, then (parent id, answer of "link") pairs -> {status}
  "release", parent_id, outcome ("completed" | "failed" | "cancelled"), error,
            child ids...               -> {released, cancelled, outbox entries written}
  "cancel", task_id                     -> {"cancelled" | "missing" | status refused, outbox}
  "take", consumer, count, min_idle_ms (-1: new entries only; else also entries
            pending that long, and consumers idle ten times that plus a minute and
            holding nothing leave the group)
      -> {entry id, parent, outcome, error, children ("," joined)} flattened
  "done", entry ids...                  -> entries acknowledged
]]
local op = ARGV[1]
local GROUP = 'release'
local now_ms
local function now()  -- Redis's clock, read once and only by the steps that write a time
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

local STATS, WAITING, SCHEDULED, OUTBOX = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function count(field, queue, by)
  redis.call('HINCRBY', STATS, field .. ':' .. queue, by)
end

-- cancel a task that is waiting, queued or scheduled; returns outbox entries written
local function cancel(task_id, tkey, deps, children, status, err)
  local f = redis.call('HMGET', tkey, 'queue_name', 'ttl')
  local queue = f[1] or 'unknown'
  if status == 'waiting' then
    redis.call('ZREM', WAITING, task_id)
    redis.call('DEL', deps)
    count('waiting', queue, -1)
  elseif status == 'scheduled' then
    redis.call('ZREM', SCHEDULED, task_id)
  end
  redis.call('HSET', tkey, 'status', 'cancelled', 'finished_at', now(), 'last_error', err)
  redis.call('HDEL', tkey, 'data', 'ttl', 'armed', 'due_at')
  if f[2] then redis.call('EXPIRE', tkey, tonumber(f[2])) end
  count('cancelled', queue, 1)
  return tell_children(OUTBOX, task_id, children, 'cancelled', err)
end

-- a waiting, armed task with no parent left to wait for is queued (or scheduled)
local function release(task_id, tkey, deps)
  if redis.call('SCARD', deps) > 0 or redis.call('HGET', tkey, 'armed') ~= '1' then return 0 end
  local f = redis.call('HMGET', tkey, 'queue_name', 'task_type', 'data', 'priority', 'delay', 'ttl')
  local delay = tonumber(f[5] or '0')
  redis.call('ZREM', WAITING, task_id)
  redis.call('DEL', deps)
  count('waiting', f[1], -1)
  count('released', f[1], 1)
  if delay > 0 then  -- the record keeps data and ttl until the scheduler moves it
    redis.call('HSET', tkey, 'status', 'scheduled', 'due_at', now() + delay)
    redis.call('HDEL', tkey, 'armed')
    redis.call('ZADD', SCHEDULED, now() + delay, task_id)
    return 1
  end
  local id = redis.call('XADD', KEYS[9 - tonumber(f[4])], '*', 'k', 'task', 'id', task_id,
    'q', f[1], 'ty', f[2], 'd', f[3], 't', now())
  redis.call('HSET', tkey, 'status', 'queued', 'entry', id)
  redis.call('HDEL', tkey, 'data', 'ttl', 'armed')
  redis.call('EXPIRE', tkey, tonumber(f[6]))
  return 1
end

local function parent_error(parent, outcome, err)
  local what = outcome == 'gone' and 'is unknown (its record expired)' or ('was ' .. outcome)
  local out = 'parent ' .. parent .. ' ' .. what
  if err ~= nil and err ~= '' then out = out .. ': ' .. err end
  return string.sub(out, 1, 2000)
end

if op == 'create' then
  local task_id, tkey, deps = ARGV[2], KEYS[9], KEYS[10]
  if redis.call('EXISTS', tkey) == 1 then
    if ARGV[9] ~= '1' then return {'exists'} end
    if redis.call('HGET', tkey, 'fingerprint') ~= ARGV[8] then return {'reused'} end
    redis.call('HSET', tkey, 'fingerprint', ARGV[8])  -- a write, for a WAIT behind it
    local f = redis.call('HMGET', tkey, 'status', 'armed')
    return {'dup', f[1] or '', f[2] or ''}
  end
  local parents = {}
  for i = 11, #ARGV do parents[#parents + 1] = ARGV[i] end
  redis.call('HSET', tkey, 'task_id', task_id, 'queue_name', ARGV[3], 'task_type', ARGV[4],
    'priority', ARGV[6], 'attempts', 0, 'enqueued_at', now(), 'fingerprint', ARGV[8],
    'status', 'waiting', 'data', ARGV[5], 'delay', ARGV[7], 'ttl', ARGV[10],
    'depends_on', table.concat(parents, ','))
  redis.call('SADD', deps, unpack(parents))
  redis.call('ZADD', WAITING, now(), task_id)
  count('waiting', ARGV[3], 1)
  return {'ok'}
elseif op == 'link' then
  local out = {}
  for i = 3, #ARGV do
    local tkey, children = KEYS[2 * (i - 2) - 1], KEYS[2 * (i - 2)]
    local status = redis.call('HGET', tkey, 'status')
    if not status then
      out[#out + 1] = 'gone'
    elseif status == 'completed' or status == 'failed' or status == 'cancelled' then
      out[#out + 1] = status
    else
      redis.call('SADD', children, ARGV[2])
      out[#out + 1] = 'wait'
    end
  end
  return out
elseif op == 'arm' then
  local task_id, tkey, deps, children = ARGV[2], KEYS[9], KEYS[10], KEYS[11]
  local status = redis.call('HGET', tkey, 'status')
  if status ~= 'waiting' then return {status or 'missing'} end
  for i = 3, #ARGV, 2 do
    local parent, answer = ARGV[i], ARGV[i + 1]
    if answer == 'completed' then
      redis.call('SREM', deps, parent)
    elseif answer ~= 'wait' then
      cancel(task_id, tkey, deps, children, status, parent_error(parent, answer, ''))
      return {'cancelled'}
    end
  end
  redis.call('HSET', tkey, 'armed', '1')
  release(task_id, tkey, deps)
  return {redis.call('HGET', tkey, 'status')}
elseif op == 'release' then
  local parent, outcome, err = ARGV[2], ARGV[3], ARGV[4]
  local released, cancelled, told = 0, 0, 0
  for i = 5, #ARGV do
    local j = 3 * (i - 5)
    local task_id, tkey, deps, children = ARGV[i], KEYS[9 + j], KEYS[10 + j], KEYS[11 + j]
    if redis.call('HGET', tkey, 'status') == 'waiting' and redis.call('SREM', deps, parent) == 1 then
      if outcome == 'completed' then
        released = released + release(task_id, tkey, deps)
      else
        told = told + cancel(task_id, tkey, deps, children, 'waiting',
                             parent_error(parent, outcome, err))
        cancelled = cancelled + 1
        count('dependents_cancelled', redis.call('HGET', tkey, 'queue_name') or 'unknown', 1)
      end
    end
  end
  return {released, cancelled, told}
elseif op == 'cancel' then
  local task_id, tkey, deps, children = ARGV[2], KEYS[9], KEYS[10], KEYS[11]
  local status = redis.call('HGET', tkey, 'status')
  if not status then return {'missing', 0} end
  if status ~= 'waiting' and status ~= 'queued' and status ~= 'scheduled' then
    return {status, 0}
  end
  return {'cancelled', cancel(task_id, tkey, deps, children, status, 'cancelled')}
elseif op == 'take' then
  local consumer, n, min_idle = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local function read()
    return redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', n, 'STREAMS', OUTBOX, '>')
  end
  local fresh = read()
  if type(fresh) == 'table' and fresh.err then  -- NOGROUP: the first read of this outbox
    redis.call('XGROUP', 'CREATE', OUTBOX, GROUP, '0', 'MKSTREAM')
    fresh = read()
    if type(fresh) == 'table' and fresh.err then return redis.error_reply(fresh.err) end
  end
  local entries = {}
  if min_idle >= 0 then
    entries = redis.call('XAUTOCLAIM', OUTBOX, GROUP, consumer, min_idle, '0-0', 'COUNT', n)[2]
    -- consumers that left (each process has its own): gone once they hold nothing
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', OUTBOX, GROUP)) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f.pending == 0 and f.idle > 10 * min_idle + 60000 and f.name ~= consumer then
        redis.call('XGROUP', 'DELCONSUMER', OUTBOX, GROUP, f.name)
      end
    end
  end
  if fresh and fresh[1] then
    for _, e in ipairs(fresh[1][2]) do entries[#entries + 1] = e end
  end
  local out = {}
  for _, e in ipairs(entries) do
    if e[2] then  -- nil: deleted meanwhile (acknowledged by "done" below, never by us)
      local f = {}
      for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
      for _, v in ipairs({e[1], f.p or '', f.o or '', f.e or '', f.c or ''}) do
        out[#out + 1] = v
      end
    else
      redis.call('XACK', OUTBOX, GROUP, e[1])
    end
  end
  return out
elseif op == 'done' then
  local ids = {}
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
  if #ids == 0 then return 0 end
  local n = redis.call('XACK', OUTBOX, GROUP, unpack(ids))
  redis.call('XDEL', OUTBOX, unpack(ids))
  return n
end
return redis.error_reply('deps.lua: unknown op ' .. tostring(op))
