-- Spend part (or all, or none) of a hold, release the rest, append the ledger entry.
-- KEYS[1] {acct:ID}   KEYS[2] {acct:ID}:hold:N   KEYS[3] {acct:ID}:holds   KEYS[4] {acct:ID}:ledger
-- KEYS[5] {acct:ID}:keys (the entry's key "capture:" .. hold key is recorded there, as any key)
-- ARGV[1] amount (>= 0)   ARGV[2] N   ARGV[3] entry id prefix ("ID~")
-- ARGV[4] the entry's JSON after its opening brace (id, ts and key are put in front here)
-- Returns "N:ts_us:hold key" | {"dup", json} | {"missing"} | {"inactive", status} | {"over", held}
--       | {"used", hold key} (the account's ledger already has an entry keyed "capture:" .. key)
local h = redis.call('HMGET', KEYS[2], 'status', 'amount', 'expires', 'entry', 'key')
local status = h[1]
if not status then
  return {'missing'}
end
if status == 'captured' then
  return {'dup', redis.call('XRANGE', KEYS[4], h[4], h[4])[1][2][2]}
end
if status ~= 'held' then
  return {'inactive', status}
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
if tonumber(now) >= tonumber(h[3]) then
  redis.call('HSET', KEYS[2], 'status', 'expired')
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(h[2]))
  redis.call('ZREM', KEYS[3], ARGV[2])
  return {'inactive', 'expired'}
end
local amount = tonumber(ARGV[1])
if amount > tonumber(h[2]) then
  return {'over', h[2]}
end
local ekey = 'e:capture:' .. h[5]
if redis.call('HEXISTS', KEYS[5], ekey) == 1 then
  return {'used', h[5]}
end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local json = '{"id":' .. cjson.encode(ARGV[3] .. n) .. ',"ts":' .. now
  .. ',"key":' .. cjson.encode('capture:' .. h[5]) .. ',' .. ARGV[4]
redis.call('XADD', KEYS[4], n .. '-0', 'entry', json)
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', '-' .. ARGV[1])
end
redis.call('HINCRBY', KEYS[1], 'held', -tonumber(h[2]))
redis.call('HSET', KEYS[2], 'status', 'captured', 'captured', ARGV[1], 'entry', n)
redis.call('HSET', KEYS[5], ekey, n)
redis.call('ZREM', KEYS[3], ARGV[2])
return n .. ':' .. now .. ':' .. h[5]
