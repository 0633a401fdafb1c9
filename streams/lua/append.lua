--[[ append.lua: decide and append ledger events of one partition, atomically.

For each event in turn: the idempotency key and the purchase's transaction id
are checked, then the account, the overdraft and the limits; the version, the
totals after the event and the hash chain are computed and the event is
XADDed. The whole call is one atomic step, so concurrent spends can never
overdraw and a crash can never leave an event half-recorded. Events later in
the call see the effects of earlier ones (same account, same key). All keys
share one hash tag; batching many events into one call saves the per-call cost.
The events of one call share a priority (one stream).

KEYS[1] ledger:{pN}:<level>            the priority stream to append to
then per event, in order (only the keys the event uses):
  ledger:{pN}:acct:<user>              account state (hash)
  ledger:{pN}:idem:<len>:<user>:<key>  first response of an Idempotency-Key (hash),
                                       when use_idem is "1" (see streams/keys.py)
  ledger:{pN}:txn:<user>               purchase transaction ids (hash), when ref ~= ""
ARGV[1] idem_ttl    seconds to keep an idempotency record
ARGV[2] max         largest total the ledger holds exactly (2^53-1)
ARGV[3] queue       queue name recorded on the entries (stats)
then one per event, ARGV[3 + i]: its fields joined by "\31" (the unit separator,
no field holds it: ledger.commands refuses control characters in texts, and the
appender checks again), one string rather than seven arguments to parse:
  kind "\31" user_id "\31" amount "\31" text "\31" ref "\31" use_idem fingerprint
  kind        user_registered | credits_purchased | credits_used | credits_adjusted
  amount      signed change to the balance (0 for a registration)
  text        email | currency | reason
  ref         purchase transaction id, else ""
  use_idem    "1" when the idem key is a real idempotency key, else "0" (one character)
  fingerprint digest of the request, to tell a true repeat from a reused key
              ("" when there is neither key nor transaction id)

An event's id is "<user_id>:<version>": unique by construction (stream entry
ids are only unique within one stream) and stable if the entry is requeued.
Returns one reply per event:
        {"ok", version, balance}            (the event id is "<user_id>:<version>")
     or {"dup", event_id, version, balance}              (a repeat: nothing appended)
     or {"reused", "key"|"transaction"} | {"duplicate_user"} | {"unknown_account"}
     or {"insufficient", balance} | {"limit"}
     or {"malformed"}   (an event argument not as above: it and the later ones not run)
The hash is sha1 over "<len>:<value>" pieces (see ledger/chain.py).
]]
local idem_ttl = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local stream, queue = KEYS[1], ARGV[3]
local t = redis.call('TIME')
local at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = string.format('%d', at_ms)
local genesis = string.rep('0', 40)

-- The hashed text's "<len>:" prefixes are looked up, not formatted: turning
-- numbers into strings is the dear part of building it (a longer text, rare,
-- is formatted on a miss). A literal table: filling it by a loop would format
-- every entry, on every call. One concatenation builds the whole text.
local LEN = setmetatable({[0] = '0:', '1:', '2:', '3:', '4:', '5:', '6:', '7:', '8:', '9:',
  '10:', '11:', '12:', '13:', '14:', '15:', '16:', '17:', '18:', '19:', '20:', '21:', '22:',
  '23:', '24:', '25:', '26:', '27:', '28:', '29:', '30:', '31:', '32:', '33:', '34:', '35:',
  '36:', '37:', '38:', '39:', '40:', '41:', '42:', '43:', '44:', '45:', '46:', '47:', '48:',
  '49:', '50:', '51:', '52:', '53:', '54:', '55:', '56:', '57:', '58:', '59:', '60:', '61:',
  '62:', '63:', '64:'},
  {__index = function(_, n) return n .. ':' end})
local AT = LEN[#at] .. at

local function fmt(n) return string.format('%d', n) end

local k = 2  -- the next event's first key
-- The state of each account this call appended to, as written: a later event
-- of the same account reads it here instead of from Redis (one HMGET per
-- account per call). Each event still writes its account hash at once, so the
-- hash and the stream agree after every event, whatever happens after it.
local written = {}

local EVENT = '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([01])(.*)$'

local malformed = false  -- once an event is, the keys of the later ones are unknown

local function append(a)
  if malformed then return {'malformed'} end
  local kind, user, am, text, ref, flag, fp = string.match(ARGV[a], EVENT)
  local amount = kind and tonumber(am)
  if not amount then
    malformed = true
    return {'malformed'}
  end
  local use_idem = flag == '1'
  local acct, idem, txn = KEYS[k], nil, nil
  k = k + 1
  if use_idem then idem, k = KEYS[k], k + 1 end
  if ref ~= '' then txn, k = KEYS[k], k + 1 end

  -- A repeat rewrites its record as it is: no change, but a write, so that a
  -- WAIT behind this call also covers the first append (Redis 7.2+ moves a
  -- connection's WAIT offset only when one of its commands writes).
  if use_idem then
    local prior = redis.call('HMGET', idem, 'e', 'v', 'b', 'f')
    if prior[1] then
      if prior[4] ~= fp then return {'reused', 'key'} end
      redis.call('HSET', idem, 'e', prior[1])
      return {'dup', prior[1], prior[2], prior[3]}
    end
  end
  if ref ~= '' then
    local prior = redis.call('HGET', txn, ref)
    if prior then
      local e, v, b, f = string.match(prior, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
      if f ~= fp then return {'reused', 'transaction'} end
      redis.call('HSET', txn, ref, prior)
      return {'dup', e, v, b}
    end
  end

  -- numbers are formatted only where they change: each string.format costs
  local state = written[acct] or
                redis.call('HMGET', acct, 'version', 'balance', 'purchased', 'used', 'head')
  local v, b, p, u, head
  if kind == 'user_registered' then
    if state[1] then return {'duplicate_user'} end
    v, b, p, u, head = '1', '0', '0', '0', genesis
  else
    if not state[1] then return {'unknown_account'} end
    local balance = tonumber(state[2]) + amount
    if balance < 0 then return {'insufficient', state[2]} end
    if balance > max then return {'limit'} end
    p, u = state[3], state[4]
    if kind == 'credits_purchased' then
      local purchased = tonumber(p) + amount
      if purchased > max then return {'limit'} end
      p = fmt(purchased)
    elseif kind == 'credits_used' then
      local used = tonumber(u) - amount
      if used > max then return {'limit'} end
      u = fmt(used)
    end
    v, b, head = fmt(tonumber(state[1]) + 1), fmt(balance), state[5]
  end

  -- the canonical text of ledger/chain.py: "<len>:<value>" pieces, lengths in bytes
  local hash = redis.sha1hex(LEN[#kind] .. kind .. LEN[#user] .. user .. LEN[#v] .. v .. AT ..
    LEN[#am] .. am .. LEN[#b] .. b .. LEN[#p] .. p .. LEN[#u] .. u .. LEN[#text] .. text ..
    LEN[#ref] .. ref .. LEN[#head] .. head)

  redis.call('XADD', stream, '*',
    'k', kind, 'u', user, 'v', v, 't', at, 'a', am, 'b', b, 'p', p, 'x', u,
    'tx', text, 'r', ref, 'ph', head, 'h', hash, 'q', queue)

  if kind == 'user_registered' then
    redis.call('HSET', acct, 'version', v, 'balance', b, 'purchased', p, 'used', u,
               'head', hash, 'email', text)
  elseif kind == 'credits_purchased' then  -- only the fields that change
    redis.call('HSET', acct, 'version', v, 'balance', b, 'purchased', p, 'head', hash)
  elseif kind == 'credits_used' then
    redis.call('HSET', acct, 'version', v, 'balance', b, 'used', u, 'head', hash)
  else
    redis.call('HSET', acct, 'version', v, 'balance', b, 'head', hash)
  end
  state[1], state[2], state[3], state[4], state[5] = v, b, p, u, hash  -- no new table
  written[acct] = state
  local event_id = user .. ':' .. v
  if use_idem then
    redis.call('HSET', idem, 'e', event_id, 'v', v, 'b', b, 'f', fp)
    redis.call('EXPIRE', idem, idem_ttl)
  end
  if ref ~= '' then
    redis.call('HSET', txn, ref, event_id .. '|' .. v .. '|' .. b .. '|' .. fp)
  end
  return {'ok', v, b}
end

local out = {}
for i = 4, #ARGV do
  out[i - 3] = append(i)
end
return out
