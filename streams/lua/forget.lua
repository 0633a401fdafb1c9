--[[ forget.lua: remove the consumers of a group that are gone, on one partition's streams.

A consumer that died (SIGKILL, a lost host) stays in its group after reclaim.lua
took its entries over: XINFO CONSUMERS would list it for ever, one more after
every crash. This removes each consumer of the group that holds no pending
entry and has been idle for at least min_idle ms.

"idle" (XINFO CONSUMERS) is the time since the consumer last interacted with
the stream. Redis 7.2 counts every attempt (and adds "inactive": the time since
the last *successful* one, not used here); Redis 7.0 and 6.2 count only reads
and claims that found something, so a live consumer with nothing to do would
look dead. Hence every live consumer touches itself here, each time it runs
this script (well within min_idle): a history read after an id no entry can
have, which returns nothing, changes no pending entry, and counts as an
interaction on every version. It only touches streams where it already is a
consumer (a read would create it elsewhere).

The check and XGROUP DELCONSUMER run in this one script: no read or claim can
hand the consumer an entry in between, so DELCONSUMER (which would drop the
consumer's pending entries with it) only ever removes a consumer that holds
none. A live consumer that is removed anyway (silent for min_idle while
holding nothing: a round longer than that) loses nothing: its next read or
claim creates it again.

KEYS[1..n] the streams of one partition (a missing stream or group is skipped)
ARGV[1] group   ARGV[2] min idle ms   ARGV[3] the caller's consumer (touched, never removed)
Returns a flat list: stream index (1..n), consumer name, idle ms for each removed.
]]
local group, min_idle, me = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- the largest id but one: the largest itself stands for '>' (new entries) in XREADGROUP
local AFTER_ALL = '18446744073709551615-18446744073709551614'
local out = {}
for i = 1, #KEYS do
  local stream = KEYS[i]
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', stream, group)
  if ok then
    for _, flat in ipairs(consumers) do
      local c = {}
      for j = 1, #flat, 2 do c[flat[j]] = flat[j + 1] end
      if c['name'] == me then
        redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', 1, 'STREAMS', stream, AFTER_ALL)
      elseif tonumber(c['pending']) == 0 and tonumber(c['idle']) >= min_idle then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, c['name'])
        out[#out + 1] = i; out[#out + 1] = c['name']; out[#out + 1] = c['idle']
      end
    end
  end
end
return out
