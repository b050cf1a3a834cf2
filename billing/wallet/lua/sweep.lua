-- Expire one account's holds that are due, releasing what they held.
-- KEYS[1] {acct:ID}   KEYS[2] {acct:ID}:holds
-- ARGV[1] now in microseconds ("" for the server's clock)   ARGV[2] most holds to look at
-- Returns {expired, looked_at}: looked_at == ARGV[2] means there may be more.
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. string.format('%06d', tonumber(t[2]))
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local expired = 0
for _, n in ipairs(due) do
  local key = KEYS[1] .. ':hold:' .. n
  local h = redis.call('HMGET', key, 'status', 'amount')
  if h[1] == 'held' then
    redis.call('HSET', key, 'status', 'expired')
    redis.call('HINCRBY', KEYS[1], 'held', -tonumber(h[2]))
    expired = expired + 1
  end
  redis.call('ZREM', KEYS[2], n)
end
return {expired, #due}
