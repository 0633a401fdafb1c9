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
  ledger:{pN}:txn:<user>               purchase transaction ids (hash), when the
                                       kind is credits_purchased and ref ~= ""
  ledger:{pN}:holds:<user>             open holds (hash), for the four hold kinds
  ledger:{pN}:holds-due                open holds by expiry (zset), for the hold kinds
ARGV[1] idem_ttl    seconds to keep an idempotency record
ARGV[2] max         largest total the ledger holds exactly (2^53-1)
ARGV[3] queue       queue name recorded on the entries (stats)
ARGV[4] max_holds   most open holds an account may have
then one per event, ARGV[4 + i]: its fields joined by "\31" (the unit separator,
no field holds it: ledger.commands refuses control characters in texts, and the
appender checks again), one string rather than seven arguments to parse:
  kind "\31" user_id "\31" amount "\31" text "\31" ref "\31" use_idem fingerprint
  [ "\31" extra ]
  kind        user_registered | credits_purchased | credits_used | credits_adjusted
              | credits_held | hold_captured | hold_released | hold_expired
  amount      signed change to the balance (0 for a registration); for credits_held
              the amount to hold; for hold_captured the amount to capture (0: all)
  text        email | currency | reason
  ref         purchase transaction id; the hold id of a capture, release or expiry;
              else ""
  use_idem    "1" when the idem key is a real idempotency key, else "0" (one character)
  fingerprint digest of the request, to tell a true repeat from a reused key
              ("" when there is neither key nor transaction id)
  extra       credits_held: expires_in_s (whole seconds)

Holds. The account hash keeps "held" (sum of open holds) and "hseq" (holds
ever made: the next hold id is "<user>:h<hseq+1>"); the holds hash maps each
open hold's id to "<credits>|<expires_at_ms>|<at_ms>|<reason>"; holds-due
scores each open hold id by its expiry. available = balance - held: a hold, a
use and a negative adjustment must fit in it. A capture or release is refused
at or after the hold's expiry ("hold_not_open"), an expiry before it
("hold_not_due"): the hold leaves the holds hash in the step that closes it,
so whichever of an expiry and a capture runs first wins, and the other is
refused. The three hold fields hd (held after), ha (the hold's credits), he
(its expiry) are written and hashed only when one is non-zero, so accounts
without holds keep their entries and hashes exactly.

An event's id is "<user_id>:<version>": unique by construction (stream entry
ids are only unique within one stream) and stable if the entry is requeued.
Returns one reply per event:
        {"ok", version, balance, held[, hold_id]}  (the event id is "<user_id>:<version>")
     or {"dup", event_id, version, balance[, held, hold_id]}  (a repeat: nothing appended)
     or {"reused", "key"|"transaction"} | {"duplicate_user"} | {"unknown_account"}
     or {"insufficient", balance, available} | {"limit"}
     or {"too_many_holds"} | {"unknown_hold"} | {"hold_not_open"} | {"hold_not_due"}
     or {"over_capture", hold_credits}
     or {"malformed"}   (an event argument not as above: it and the later ones not run)
The hash is sha1 over "<len>:<value>" pieces (see ledger/chain.py).
]]
local idem_ttl = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local stream, queue = KEYS[1], ARGV[3]
local max_holds = tonumber(ARGV[4])
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

local EVENT =
  '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([01])([^\31]*)\31?(.*)$'
local HOLD_KINDS = {credits_held = true, hold_captured = true, hold_released = true,
  hold_expired = true}

local malformed = false  -- once an event is, the keys of the later ones are unknown

local function append(a)
  if malformed then return {'malformed'} end
  local kind, user, am, text, ref, flag, fp, extra = string.match(ARGV[a], EVENT)
  local amount = kind and tonumber(am)
  if not amount then
    malformed = true
    return {'malformed'}
  end
  local use_idem = flag == '1'
  local is_hold = HOLD_KINDS[kind]
  local acct, idem, txn, holds, due = KEYS[k], nil, nil, nil, nil
  k = k + 1
  if use_idem then idem, k = KEYS[k], k + 1 end
  if ref ~= '' and kind == 'credits_purchased' then txn, k = KEYS[k], k + 1 end
  if is_hold then holds, due, k = KEYS[k], KEYS[k + 1], k + 2 end

  -- A repeat rewrites its record as it is: no change, but a write, so that a
  -- WAIT behind this call also covers the first append (Redis 7.2+ moves a
  -- connection's WAIT offset only when one of its commands writes).
  if use_idem then
    local prior = redis.call('HMGET', idem, 'e', 'v', 'b', 'f', 'hd', 'h')
    if prior[1] then
      if prior[4] ~= fp then return {'reused', 'key'} end
      redis.call('HSET', idem, 'e', prior[1])
      return {'dup', prior[1], prior[2], prior[3], prior[5] or '', prior[6] or ''}
    end
  end
  if txn then
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
    redis.call('HMGET', acct, 'version', 'balance', 'purchased', 'used', 'head', 'held', 'hseq')
  local v, b, p, u, head
  local hd, hseq = state[6] or '0', state[7] or '0'  -- held, holds made ('0' when absent)
  local ha, he = '0', '0'  -- the hold's credits and expiry, for the hold kinds
  local hold_entry  -- a new hold's value in the holds hash
  if kind == 'user_registered' then
    if state[1] then return {'duplicate_user'} end
    v, b, p, u, head = '1', '0', '0', '0', genesis
  elseif is_hold then
    if not state[1] then return {'unknown_account'} end
    local bal, held = tonumber(state[2]), tonumber(hd)
    p, u, b = state[3], state[4], state[2]
    if kind == 'credits_held' then
      local secs = tonumber(extra)  -- whole seconds, within MAX_HOLD_EXPIRY_S (366 days)
      if not secs or secs < 1 or secs > 31622400 or secs % 1 ~= 0 or amount <= 0 then
        return {'malformed'}
      end
      if redis.call('HLEN', holds) >= max_holds then return {'too_many_holds'} end
      if amount > bal - held then return {'insufficient', state[2], fmt(bal - held)} end
      hseq = fmt(tonumber(hseq) + 1)
      ref = user .. ':h' .. hseq
      ha, he, hd = am, fmt(at_ms + secs * 1000), fmt(held + amount)
      hold_entry = ha .. '|' .. he .. '|' .. at .. '|' .. text
      am = '0'
    else
      -- a hold id is "<user>:h<n>", n from 1 to the holds made: else never made here
      local n = string.sub(ref, 1, #user + 2) == user .. ':h' and
                string.match(string.sub(ref, #user + 3), '^[1-9]%d*$')
      if not n or #n > 15 or tonumber(n) > tonumber(hseq) then return {'unknown_hold'} end
      local open = redis.call('HGET', holds, ref)
      if not open then return {'hold_not_open'} end
      local hc, exp = string.match(open, '^(%d+)|(%d+)|')
      local credits, expires = tonumber(hc), tonumber(exp)
      if kind == 'hold_expired' then
        if at_ms < expires then return {'hold_not_due'} end
      elseif at_ms >= expires then
        return {'hold_not_open'}
      end
      am = '0'
      if kind == 'hold_captured' then
        if amount < 0 or amount % 1 ~= 0 then return {'malformed'} end
        local take = amount == 0 and credits or amount
        if take > credits then return {'over_capture', hc} end
        local used = tonumber(u) + take
        if used > max then return {'limit'} end
        u, b, am = fmt(used), fmt(bal - take), fmt(-take)
      end
      ha, hd = hc, fmt(held - credits)
    end
    v, head = fmt(tonumber(state[1]) + 1), state[5]
  else
    if not state[1] then return {'unknown_account'} end
    local balance = tonumber(state[2]) + amount
    if balance < tonumber(hd) then
      return {'insufficient', state[2], fmt(tonumber(state[2]) - tonumber(hd))}
    end
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
  local holding = is_hold or hd ~= '0'  -- the hold fields are written and hashed

  -- the canonical text of ledger/chain.py: "<len>:<value>" pieces, lengths in bytes
  local canon = LEN[#kind] .. kind .. LEN[#user] .. user .. LEN[#v] .. v .. AT ..
    LEN[#am] .. am .. LEN[#b] .. b .. LEN[#p] .. p .. LEN[#u] .. u .. LEN[#text] .. text ..
    LEN[#ref] .. ref .. LEN[#head] .. head
  if holding then canon = canon .. LEN[#hd] .. hd .. LEN[#ha] .. ha .. LEN[#he] .. he end
  local hash = redis.sha1hex(canon)

  if holding then
    redis.call('XADD', stream, '*',
      'k', kind, 'u', user, 'v', v, 't', at, 'a', am, 'b', b, 'p', p, 'x', u,
      'tx', text, 'r', ref, 'ph', head, 'h', hash, 'q', queue, 'hd', hd, 'ha', ha, 'he', he)
  else
    redis.call('XADD', stream, '*',
      'k', kind, 'u', user, 'v', v, 't', at, 'a', am, 'b', b, 'p', p, 'x', u,
      'tx', text, 'r', ref, 'ph', head, 'h', hash, 'q', queue)
  end

  if is_hold then
    redis.call('HSET', acct, 'version', v, 'balance', b, 'used', u, 'held', hd, 'hseq', hseq,
               'head', hash)
    if kind == 'credits_held' then
      redis.call('HSET', holds, ref, hold_entry)
      redis.call('ZADD', due, he, ref)
    else
      redis.call('HDEL', holds, ref)
      redis.call('ZREM', due, ref)
    end
  elseif kind == 'user_registered' then
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
  state[6], state[7] = hd, hseq
  written[acct] = state
  local event_id = user .. ':' .. v
  if use_idem then
    if is_hold then
      redis.call('HSET', idem, 'e', event_id, 'v', v, 'b', b, 'f', fp, 'hd', hd, 'h', ref)
    else
      redis.call('HSET', idem, 'e', event_id, 'v', v, 'b', b, 'f', fp)
    end
    redis.call('EXPIRE', idem, idem_ttl)
  end
  if txn then
    redis.call('HSET', txn, ref, event_id .. '|' .. v .. '|' .. b .. '|' .. fp)
  end
  if is_hold then return {'ok', v, b, hd, ref} end
  return {'ok', v, b, hd}
end

local out = {}
for i = 5, #ARGV do
  out[i - 4] = append(i)
end
return out
