--[[ requeue.lua: put a dead letter back on the stream it came from.

The copy is marked with its original position (field "rq" = "<stream>/<id>"),
so readers of the log know it repeats an entry; handlers key their side effects
on the event or task id, which the copy keeps. The dead letter is removed in the
same step, so a double click requeues once.

KEYS[1] ledger:{pN}:dead    KEYS[2] ledger:{pN}:attempts
ARGV[1] dead-letter entry id   ARGV[2] task key prefix "ledger:{pN}:task:"
Returns {"ok", new entry id, stream} | {"missing"}
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
local stream = meta._stream
if not stream or #fields == 0 then return {'missing'} end
fields[#fields + 1] = 'rq'; fields[#fields + 1] = meta.rq or (stream .. '/' .. meta._id)
local id = redis.call('XADD', stream, '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
local named = {}
for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
local task_id = named.k == 'task' and named.id or nil
if task_id then
  redis.call('HSET', ARGV[2] .. task_id, 'status', 'queued', 'attempts', 0, 'entry', id,
    'last_error', '')
  redis.call('PERSIST', ARGV[2] .. task_id)
end
return {'ok', id, stream}
