-- insert_unique: a key that is present but expired by the caller's clock is free again, even if
-- its TTL has not fired yet (plain SET NX would wrongly refuse it).
-- KEYS[1] string holding expires_at; ARGV[1] expires_at, ARGV[2] now, ARGV[3] ttl secs.
local cur = redis.call('GET', KEYS[1])
local exp = cur and tonumber(cur)
if exp and tonumber(ARGV[2]) < exp then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
