--[[ append.lua: decide and append one ledger event, atomically.

The overdraft check, the version, the totals after the event, the hash chain and
the XADD happen in one step, so concurrent spends can never overdraw and a
crash can never leave an event half-recorded. All keys share one hash tag.

KEYS[1] ledger:{pN}:acct:<user>       account state (hash)
KEYS[2] ledger:{pN}:<level>           the priority stream to append to
KEYS[3] ledger:{pN}:idem:<user>:<key> first response of an Idempotency-Key (hash)
KEYS[4] ledger:{pN}:txn:<user>        purchase transaction ids (hash)

ARGV[1] kind        user_registered | credits_purchased | credits_used | credits_adjusted
ARGV[2] user_id
ARGV[3] amount      signed change to the balance (0 for a registration)
ARGV[4] text        email | currency | reason
ARGV[5] ref         purchase transaction id, else ""
ARGV[6] use_idem    "1" when KEYS[3] is a real idempotency key
ARGV[7] fingerprint digest of the request, to tell a true repeat from a reused key
ARGV[8] idem_ttl    seconds to keep an idempotency record
ARGV[9] queue       queue name recorded on the entry (stats)
ARGV[10] max        largest total the ledger holds exactly (2^53-1)

An event's id is "<user_id>:<version>": unique by construction (stream entry
ids are only unique within one stream) and stable if the entry is requeued.
Returns {"ok", event_id, version, balance, at_ms, hash, stream entry id}
     or {"dup", event_id, version, balance}              (a repeat: nothing appended)
     or {"reused", "key"|"transaction"} | {"duplicate_user"} | {"unknown_account"}
     or {"insufficient", balance} | {"limit"}
The hash is sha1 over "<len>:<value>" pieces (see ledger/chain.py).
]]
local kind, user, text, ref = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local amount = tonumber(ARGV[3])
local max = tonumber(ARGV[10])

local function fmt(n) return string.format('%d', n) end

if ARGV[6] == '1' then
  local prior = redis.call('HMGET', KEYS[3], 'e', 'v', 'b', 'f')
  if prior[1] then
    if prior[4] ~= ARGV[7] then return {'reused', 'key'} end
    return {'dup', prior[1], prior[2], prior[3]}
  end
end
if ref ~= '' then
  local prior = redis.call('HGET', KEYS[4], ref)
  if prior then
    local e, v, b, f = string.match(prior, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
    if f ~= ARGV[7] then return {'reused', 'transaction'} end
    return {'dup', e, v, b}
  end
end

local state = redis.call('HMGET', KEYS[1], 'version', 'balance', 'purchased', 'used', 'head')
local version, balance, purchased, used, head
if kind == 'user_registered' then
  if state[1] then return {'duplicate_user'} end
  version, balance, purchased, used, head = 1, 0, 0, 0, string.rep('0', 40)
else
  if not state[1] then return {'unknown_account'} end
  version = tonumber(state[1]) + 1
  balance, purchased, used = tonumber(state[2]), tonumber(state[3]), tonumber(state[4])
  head = state[5]
  local new_balance = balance + amount
  if new_balance < 0 then return {'insufficient', fmt(balance)} end
  if kind == 'credits_purchased' then purchased = purchased + amount end
  if kind == 'credits_used' then used = used - amount end
  if new_balance > max or purchased > max or used > max then return {'limit'} end
  balance = new_balance
end

local t = redis.call('TIME')
local at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local fields = {kind, user, fmt(version), fmt(at_ms), fmt(amount), fmt(balance),
                fmt(purchased), fmt(used), text, ref, head}
local parts = {}
for i, v in ipairs(fields) do parts[i] = string.len(v) .. ':' .. v end
local hash = redis.sha1hex(table.concat(parts))

local event_id = user .. ':' .. fmt(version)
local id = redis.call('XADD', KEYS[2], '*',
  'k', kind, 'u', user, 'v', fmt(version), 't', fmt(at_ms), 'a', fmt(amount),
  'b', fmt(balance), 'p', fmt(purchased), 'x', fmt(used), 'tx', text, 'r', ref,
  'ph', head, 'h', hash, 'q', ARGV[9])

redis.call('HSET', KEYS[1], 'version', fmt(version), 'balance', fmt(balance),
  'purchased', fmt(purchased), 'used', fmt(used), 'head', hash)
if kind == 'user_registered' then redis.call('HSET', KEYS[1], 'email', text) end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[3], 'e', event_id, 'v', fmt(version), 'b', fmt(balance), 'f', ARGV[7])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
end
if ref ~= '' then
  redis.call('HSET', KEYS[4], ref, event_id .. '|' .. fmt(version) .. '|' .. fmt(balance) .. '|' .. ARGV[7])
end
return {'ok', event_id, fmt(version), fmt(balance), fmt(at_ms), hash, id}
