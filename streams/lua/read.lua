--[[ read.lua: new entries of one partition for one consumer, highest level first.

Each level takes what is left of the partition's share of the round, so CRITICAL
work is served before HIGH, and so on; a lower level still gets one read when
the higher ones filled the share (the guaranteed share: LOW never starves under
a flood of CRITICAL). One call per partition, all partitions pipelined: one
round trip per round instead of one per level.

KEYS[1..4] ledger:{pN}:critical|high|normal|low
ARGV[1] group   ARGV[2] consumer   ARGV[3] this partition's share of the round
ARGV[4] levels to read, as digits 1..4, highest first (e.g. "1234")
Returns a flat list: level, entry id, {field, value, …} for each entry read.
]]
local group, consumer, left = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 1, #ARGV[4] do
  local level = tonumber(string.sub(ARGV[4], i, i))
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', math.max(left, 1),
                           'STREAMS', KEYS[level], '>')
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      out[#out + 1] = level
      out[#out + 1] = entry[1]
      out[#out + 1] = entry[2]
      left = left - 1
    end
  end
end
return out
