-- rotate: refresh-token rotation with reuse detection (RFC 9700 §4.14.2), atomic so that of two
-- concurrent rotations of one token exactly one wins and the other is seen as reuse.
-- KEYS[1] family hash; ARGV[1] presented hash, ARGV[2] new hash, ARGV[3] now, ARGV[4] family id.
-- Returns {0, nil} invalid, {1, json} rotated, {2, json} reused (family deleted).
local f = redis.call('HMGET', KEYS[1], 'data', 'cur', 'exp', 'idx')
local exp = tonumber(f[3])
if not f[1] or not exp or tonumber(ARGV[3]) >= exp then return {0, false} end
if f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'cur', ARGV[2], 'u:' .. ARGV[1], '1')
  return {1, f[1]}
end
if redis.call('HEXISTS', KEYS[1], 'u:' .. ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1])
  if f[4] then redis.call('SREM', f[4], ARGV[4]) end
  return {2, f[1]}
end
-- A hash never issued in this family: leave it alone, or anyone could revoke a stranger's session.
return {0, false}
