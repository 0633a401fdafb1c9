--[[ outbox.lua: prepended to settle.lua and deps.lua (see scripts.PRELUDES).

tell_children(outbox, task_id, children, outcome, err) -> 1 if the task had
children: their ids move from its children set into one entry of its
partition's outbox (p=task, o=outcome, e=error, c=ids joined by ","), written in
the same script step as the task's end; 0 if it had none.
]]
local function tell_children(outbox, task_id, children, outcome, err)
  local ids = redis.call('SMEMBERS', children)
  if #ids == 0 then return 0 end
  redis.call('XADD', outbox, '*', 'p', task_id, 'o', outcome, 'e', err, 'c', table.concat(ids, ','))
  redis.call('DEL', children)
  return 1
end

