--[[ begin.lua: count a delivery attempt for each claimed entry about to be processed.

Counting at the start (not at failure) means a worker killed mid-handler still
used up an attempt, so a task that crashes every worker ends in the dead letters.
Only entries delivered before (claimed: a retry, or taken over) come here: a fresh
delivery (XREADGROUP ">") is attempt 1 and writes nothing before it settles, so
the first claim of an entry finds no count and makes it 2 (the fresh attempt,
then this one).

KEYS[1]    ledger:{pN}:attempts        <group>|<level>|<entry id> -> attempts
KEYS[1+i]  ledger:{pN}:task:<id>       status hash of entry i (KEYS[1] when not a task)
KEYS[1+n+i] the stream of entry i
ARGV[1]    group      ARGV[2] consumer
ARGV[2+i]  "<level>|<entry id>" of entry i (entry ids repeat across streams, so the
           level is part of the name)
Returns attempts per entry, -1 for a task already completed or cancelled (ack it,
skip it), or
-2 for an entry no longer pending for this consumer (another one took it over:
leave it alone).
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local ended = {completed = true, cancelled = true}
local n_entries = #ARGV - 2
local by_stream, mine = {}, {}
for i = 1, n_entries do
  local stream = KEYS[1 + n_entries + i]
  by_stream[stream] = by_stream[stream] or {}
  table.insert(by_stream[stream], string.match(ARGV[2 + i], '|(.*)$'))
end
for stream, ids in pairs(by_stream) do mine[stream] = owned(stream, ARGV[1], ARGV[2], ids) end
for i = 1, n_entries do
  local tkey, stream, name = KEYS[1 + i], KEYS[1 + n_entries + i], ARGV[2 + i]
  local id = string.match(name, '|(.*)$')
  if not mine[stream][id] then
    out[#out + 1] = -2
  elseif tkey ~= KEYS[1] and ended[redis.call('HGET', tkey, 'status')] then
    out[#out + 1] = -1
  else
    local n = redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. name, 1)
    if n == 1 then n = redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. name, 1) end
    if tkey ~= KEYS[1] then
      redis.call('HSET', tkey, 'status', 'processing', 'attempts', n, 'started_at', now)
    end
    out[#out + 1] = n
  end
end
return out
