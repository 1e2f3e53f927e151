-- revoke_family: KEYS[1] family hash; ARGV[1] family id. Returns 1 if it was stored.
local idx = redis.call('HGET', KEYS[1], 'idx')
if idx then redis.call('SREM', idx, ARGV[1]) end
return redis.call('DEL', KEYS[1])
