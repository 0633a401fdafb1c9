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
then 7 per event i (base = 3 + 7*(i-1)):
  base+1 kind       user_registered | credits_purchased | credits_used | credits_adjusted
  base+2 user_id
  base+3 amount     signed change to the balance (0 for a registration)
  base+4 text       email | currency | reason
  base+5 ref        purchase transaction id, else ""
  base+6 use_idem   "1" when the idem key is a real idempotency key
  base+7 fingerprint digest of the request, to tell a true repeat from a reused key
                    ("" when there is neither key nor transaction id)

An event's id is "<user_id>:<version>": unique by construction (stream entry
ids are only unique within one stream) and stable if the entry is requeued.
Returns one reply per event:
        {"ok", version, balance}            (the event id is "<user_id>:<version>")
     or {"dup", event_id, version, balance}              (a repeat: nothing appended)
     or {"reused", "key"|"transaction"} | {"duplicate_user"} | {"unknown_account"}
     or {"insufficient", balance} | {"limit"}
The hash is sha1 over "<len>:<value>" pieces (see ledger/chain.py).
]]
local idem_ttl = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local stream, queue = KEYS[1], ARGV[3]
local t = redis.call('TIME')
local at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = string.format('%d', at_ms)
local genesis = string.rep('0', 40)

local PIECES = string.rep('%d:%s', 11)  -- one string.format, not 22 concatenations

local function fmt(n) return string.format('%d', n) end

local k = 2  -- the next event's first key

local function append(a)
  local kind, user, am, text, ref = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
                                    ARGV[a + 5]
  local amount = tonumber(am)
  local use_idem, fp = ARGV[a + 6] == '1', ARGV[a + 7]
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
  local state = redis.call('HMGET', acct, 'version', 'balance', 'purchased', 'used', 'head')
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

  -- texts never hold control characters (ledger.commands), so %s copies them whole
  local hash = redis.sha1hex(string.format(PIECES, #kind, kind, #user, user, #v, v, #at, at,
    #am, am, #b, b, #p, p, #u, u, #text, text, #ref, ref, #head, head))

  redis.call('XADD', stream, '*',
    'k', kind, 'u', user, 'v', v, 't', at, 'a', am, 'b', b, 'p', p, 'x', u,
    'tx', text, 'r', ref, 'ph', head, 'h', hash, 'q', queue)

  if kind == 'user_registered' then
    redis.call('HSET', acct, 'version', v, 'balance', b, 'purchased', p, 'used', u,
               'head', hash, 'email', text)
  else
    redis.call('HSET', acct, 'version', v, 'balance', b, 'purchased', p, 'used', u,
               'head', hash)
  end
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
for i = 1, (#ARGV - 3) / 7 do
  out[i] = append(3 + 7 * (i - 1))
end
return out
