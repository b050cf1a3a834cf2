-- Reserve credit on one account for a while, idempotently.
-- KEYS[1] {acct:ID}   KEYS[2] {acct:ID}:keys   KEYS[3] {acct:ID}:holds (zset: hold number -> expiry)
-- ARGV[1] amount   ARGV[2] idempotency key   ARGV[3] time to live in microseconds
-- Hold hashes live at KEYS[1] .. ":hold:" .. N (same hash tag, so the same slot).
-- Returns "N:created_us:expires_us" (one string: the common answer, cheapest to parse)
--       | {"dup", N, amount, key, status, created_us, expires_us, captured, entry}
--       | {"short", available} | {"conflict"} (a ledger entry of the account has the key)
-- A dup is the first hold; the caller compares its amount with this call's.
local function reply(tag, n)
  local h = redis.call('HMGET', KEYS[1] .. ':hold:' .. n,
    'amount', 'key', 'status', 'created', 'expires', 'captured', 'entry')
  return {tag, n, h[1], h[2], h[3], h[4], h[5], h[6], h[7]}
end
local known = redis.call('HGET', KEYS[2], 'h:' .. ARGV[2])
if known then
  return reply('dup', known)
end
if redis.call('HEXISTS', KEYS[2], 'e:' .. ARGV[2]) == 1 then
  return {'conflict'}
end
local b = redis.call('HMGET', KEYS[1], 'total', 'held')
local available = (tonumber(b[1]) or 0) - (tonumber(b[2]) or 0)
if available < tonumber(ARGV[1]) then
  return {'short', available}
end
local n = redis.call('HINCRBY', KEYS[1], 'hseq', 1)
local t = redis.call('TIME')
local created = t[1] .. string.format('%06d', tonumber(t[2]))
local expires = string.format('%d', tonumber(created) + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1] .. ':hold:' .. n, 'amount', ARGV[1], 'key', ARGV[2],
  'status', 'held', 'created', created, 'expires', expires, 'captured', '0')
redis.call('HINCRBY', KEYS[1], 'held', ARGV[1])
redis.call('HSET', KEYS[2], 'h:' .. ARGV[2], n)
redis.call('ZADD', KEYS[3], expires, n)
return n .. ':' .. created .. ':' .. expires
