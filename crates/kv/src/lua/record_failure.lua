-- record_failure: sliding window over a sorted set of failure times (score = time).
-- KEYS[1] zset; ARGV[1] now, ARGV[2] cutoff (now - window; older-or-equal no longer counts),
-- ARGV[3] ttl secs.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
-- Members must be unique: failures in the same second are numbered. Same-second entries are
-- removed together or not at all, so the count is a fresh suffix.
local n = redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1] .. ':' .. n)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
