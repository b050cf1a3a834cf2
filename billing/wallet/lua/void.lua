-- Release a whole hold. Voiding a voided hold is a replay and changes nothing.
-- KEYS[1] {acct:ID}   KEYS[2] {acct:ID}:hold:N   KEYS[3] {acct:ID}:holds
-- ARGV[1] N   ARGV[2] reason
-- Returns {"ok", amount, key, status, created_us, expires_us, captured, entry}
--       | {"missing"} | {"inactive", status}
local h = redis.call('HMGET', KEYS[2], 'status', 'amount', 'expires')
local status = h[1]
if not status then
  return {'missing'}
end
if status == 'held' then
  local t = redis.call('TIME')
  local now = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HINCRBY', KEYS[1], 'held', -tonumber(h[2]))
  redis.call('ZREM', KEYS[3], ARGV[1])
  if tonumber(now) >= tonumber(h[3]) then
    redis.call('HSET', KEYS[2], 'status', 'expired')
    return {'inactive', 'expired'}
  end
  redis.call('HSET', KEYS[2], 'status', 'voided', 'reason', ARGV[2])
elseif status ~= 'voided' then
  return {'inactive', status}
end
local r = redis.call('HMGET', KEYS[2],
  'amount', 'key', 'status', 'created', 'expires', 'captured', 'entry')
return {'ok', r[1], r[2], r[3], r[4], r[5], r[6], r[7]}
