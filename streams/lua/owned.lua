--[[ owned.lua: prepended to begin.lua and settle.lua (see scripts.PRELUDES).

owned(stream, group, consumer, ids) -> the ids still pending for consumer, each
mapped to its idle time (ms since it was last delivered to the consumer: settle.lua
takes a fresh delivery's start from it), from one XPENDING over the ids' range
instead of one per entry. When
the consumer holds more entries in that range than one reply brings (many
waiting retries), it asks entry by entry.
]]
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

local function owned(stream, group, consumer, ids)
  local lo, hi = ids[1], ids[1]
  for _, id in ipairs(ids) do
    if id_less(id, lo) then lo = id end
    if id_less(hi, id) then hi = id end
  end
  local limit = 4 * #ids + 64
  local rows = redis.call('XPENDING', stream, group, lo, hi, limit, consumer)
  local mine = {}
  if #rows < limit then
    for _, row in ipairs(rows) do mine[row[1]] = row[3] end
    return mine
  end
  for _, id in ipairs(ids) do
    local row = redis.call('XPENDING', stream, group, id, id, 1, consumer)[1]
    if row then mine[id] = row[3] end
  end
  return mine
end

