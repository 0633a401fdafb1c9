--[[ requeue.lua: put a dead letter back on the stream it came from.

The copy is marked with its original position (field "rq" = "<stream>/<id>"),
so readers of the log know it repeats an entry; handlers key their side effects
on the event or task id, which the copy keeps. The dead letter is removed in the
same step, so a double click requeues once.

The caller reads the dead letter first (XRANGE) for the keys it names, so every
key this script touches is declared (Redis Cluster); the script reads it again
and refuses if those keys are not the ones it names now.

KEYS[1] ledger:{pN}:dead    KEYS[2] ledger:{pN}:attempts
KEYS[3] the stream the dead letter came from (its "_stream" field)
KEYS[4] ledger:{pN}:task:<id> when the dead letter is a task (its "id" field), else absent
ARGV[1] dead-letter entry id   ARGV[2] the task id the caller read, "" when not a task
Returns {"ok", new entry id, stream} | {"missing"} | {"changed"} (the entry does not
name KEYS[3] / ARGV[2]: nothing written, read it again)
]]
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return {'missing'} end
local fields, meta = {}, {}  -- the entry's own fields; the dead letter's _meta
local raw = entry[2]
for i = 1, #raw, 2 do
  local k, v = raw[i], raw[i + 1]
  if string.sub(k, 1, 1) == '_' then meta[k] = v
  elseif k ~= 'rq' then fields[#fields + 1] = k; fields[#fields + 1] = v
  else meta.rq = v end
end
if not meta._stream or #fields == 0 then return {'missing'} end
local named = {}
for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
local task_id = named.k == 'task' and named.id or nil
local suffix = ':task:' .. (task_id or '')
if meta._stream ~= KEYS[3] or (task_id or '') ~= ARGV[2] or (task_id ~= nil) ~= (KEYS[4] ~= nil)
    or (task_id and string.sub(KEYS[4], -#suffix) ~= suffix) then
  return {'changed'}
end
local stream = KEYS[3]
fields[#fields + 1] = 'rq'; fields[#fields + 1] = meta.rq or (stream .. '/' .. meta._id)
local id = redis.call('XADD', stream, '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
if task_id then
  redis.call('HSET', KEYS[4], 'status', 'queued', 'attempts', 0, 'entry', id, 'last_error', '')
  redis.call('PERSIST', KEYS[4])
end
return {'ok', id, stream}
