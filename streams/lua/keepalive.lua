--[[ keepalive.lua: keep a consumer's claim on entries it is still running.

An entry idle for claim_idle_ms is taken over by another consumer (reclaim.lua),
so a handler running longer would run twice at once. While a handler runs, its
worker calls this now and then: XCLAIM ... JUSTID by the consumer that holds the
entry resets the entry's idle time without counting a delivery. Only entries
still pending for that consumer are touched, so a claim already taken over is
never taken back. After the worker dies nothing resets them: they are taken
over claim_idle_ms after the last call.

KEYS[1..4] ledger:{pN}:critical|high|normal|low
ARGV[1] group   ARGV[2] consumer   ARGV[2+i] "<level digit 1..4>|<entry id>"
Returns the number of entries whose claim was renewed.
]]
local group, consumer = ARGV[1], ARGV[2]
local by_level = {}
for i = 3, #ARGV do
  local level, id = string.match(ARGV[i], '^(%d)|(.*)$')
  level = tonumber(level)
  by_level[level] = by_level[level] or {}
  table.insert(by_level[level], id)
end
local renewed = 0
for level, ids in pairs(by_level) do
  local mine = owned(KEYS[level], group, consumer, ids)
  local keep = {}
  for _, id in ipairs(ids) do
    if mine[id] then keep[#keep + 1] = id end
  end
  for i = 1, #keep, 500 do
    local part = {unpack(keep, i, math.min(i + 499, #keep))}
    renewed = renewed + #redis.call('XCLAIM', KEYS[level], group, consumer, 0, unpack(part),
                                    'JUSTID')
  end
end
return renewed
