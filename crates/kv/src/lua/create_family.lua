-- create_family: the family hash {data, cur, exp, idx, u:<hash>...} plus its id in the user's
-- index set. KEYS[1] family hash, KEYS[2] subject index set;
-- ARGV[1] family JSON, ARGV[2] current hash, ARGV[3] expires_at, ARGV[4] ttl secs, ARGV[5] id.
-- Re-creating an id replaces the family wholesale, dropping it from a previous owner's index.
local old_idx = redis.call('HGET', KEYS[1], 'idx')
if old_idx then redis.call('SREM', old_idx, ARGV[5]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'cur', ARGV[2], 'exp', ARGV[3], 'idx', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
-- The index outlives every family in it (TTL -1: none set yet).
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return 1
