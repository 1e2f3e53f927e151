-- Shared prelude. Garbage-collection TTL for a key whose end is an absolute time of the caller's
-- clock: until that time by Redis' clock, plus a grace that absorbs clock skew between the
-- gateway and Redis. The TTL only reclaims memory; answers compare stored times with `now`.
local function gc_ttl(until_secs, grace_secs)
  local t = until_secs - tonumber(redis.call('TIME')[1])
  if t < 0 then t = 0 end
  return string.format('%d', t + grace_secs)
end
