-- Credit or debit one account and append the ledger entry, atomically and idempotently.
-- KEYS[1] {acct:ID} (hash: total, held, seq, hseq)   KEYS[2] {acct:ID}:keys   KEYS[3] {acct:ID}:ledger
-- ARGV[1] signed amount   ARGV[2] idempotency key   ARGV[3] entry id prefix ("ID~")
-- ARGV[4] the entry's JSON after its opening brace   ARGV[5] "1" to refuse past available
-- ARGV[6] the most the total may reach (MAX_TOTAL, 2^53 - 1: Lua's doubles hold it exactly)
-- Returns "N:ts_us" | {"dup", json} | {"short", available} | {"conflict"} (a hold has the key)
--       | {"limit", total} (a credit would take the total past ARGV[6]; nothing changed)
-- A dup is the first entry; the caller compares its kind and amount with this call's.
local known = redis.call('HGET', KEYS[2], 'e:' .. ARGV[2])
if known then
  return {'dup', redis.call('XRANGE', KEYS[3], known, known)[1][2][2]}
end
if redis.call('HEXISTS', KEYS[2], 'h:' .. ARGV[2]) == 1 then
  return {'conflict'}
end
if ARGV[5] == '1' then
  local b = redis.call('HMGET', KEYS[1], 'total', 'held')
  local available = (tonumber(b[1]) or 0) - (tonumber(b[2]) or 0)
  if available + tonumber(ARGV[1]) < 0 then
    return {'short', available}
  end
else
  local total = tonumber(redis.call('HGET', KEYS[1], 'total')) or 0
  if tonumber(ARGV[1]) > tonumber(ARGV[6]) - total then
    return {'limit', total}
  end
end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local t = redis.call('TIME')
local ts = t[1] .. string.format('%06d', tonumber(t[2]))
local json = '{"id":' .. cjson.encode(ARGV[3] .. n) .. ',"ts":' .. ts .. ',' .. ARGV[4]
redis.call('XADD', KEYS[3], n .. '-0', 'entry', json)
redis.call('HINCRBY', KEYS[1], 'total', ARGV[1])
redis.call('HSET', KEYS[2], 'e:' .. ARGV[2], n)
return n .. ':' .. ts
