-- revoke_tokens_before: keeps the later cut-off and the later end, so a second call never
-- un-revokes tokens voided by the first.
-- KEYS[1] hash {ts, keep}; ARGV[1] ts, ARGV[2] keep_until, ARGV[3] gc grace secs.
local f = redis.call('HMGET', KEYS[1], 'ts', 'keep')
local ts = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local cur_ts = tonumber(f[1])
local cur_keep = tonumber(f[2])
if cur_ts and cur_ts > ts then ts = cur_ts end
if cur_keep and cur_keep > keep then keep = cur_keep end
redis.call('HSET', KEYS[1], 'ts', string.format('%d', ts), 'keep', string.format('%d', keep))
redis.call('EXPIRE', KEYS[1], gc_ttl(keep, tonumber(ARGV[3])))
return 1
