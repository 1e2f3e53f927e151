-- begin_attempt: one login attempt (a password or a one-time code), counted BEFORE it is checked,
-- so that concurrent guesses cannot outrun the lockout.
-- KEYS[1] lock string (until), KEYS[2] failures zset.
-- ARGV[1] now, ARGV[2] cutoff (now - window), ARGV[3] window ttl secs, ARGV[4] threshold,
-- ARGV[5] base lock secs, ARGV[6] max lock secs, ARGV[7] gc grace secs.
-- Returns {1, until} while locked (nothing counted), else {0, count}. An attempt beyond the
-- threshold locks at once for its back-off (base * 2^(count - threshold), capped), before it is
-- checked: concurrent attempts then find the lock; a correct one clears it afterwards.
local now = tonumber(ARGV[1])
local held = redis.call('GET', KEYS[1])
if held then
  local until_secs = tonumber(held)
  if not until_secs then return redis.error_reply('EHRCORRUPT a stored lock time is not a number') end
  if now < until_secs then return {1, until_secs} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
local n = redis.call('ZCOUNT', KEYS[2], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1] .. ':' .. n)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local count = redis.call('ZCARD', KEYS[2])
local threshold = tonumber(ARGV[4])
if threshold > 0 and count > threshold then
  local secs = tonumber(ARGV[5]) * 2 ^ (count - threshold)
  local max = tonumber(ARGV[6])
  if secs > max then secs = max end
  local until_secs = now + secs
  redis.call('SET', KEYS[1], string.format('%d', until_secs), 'EX', gc_ttl(until_secs, tonumber(ARGV[7])))
end
return {0, count}
