-- take: read and delete in one step, so one of any number of concurrent takes gets the value.
-- KEYS[1] value hash {v, exp}; ARGV[1] now.
local f = redis.call('HMGET', KEYS[1], 'v', 'exp')
redis.call('DEL', KEYS[1])
local exp = tonumber(f[2])
if f[1] and exp and tonumber(ARGV[1]) < exp then return f[1] end
return false
