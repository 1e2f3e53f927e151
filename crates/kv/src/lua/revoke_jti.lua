-- revoke_jti: keeps the later of the stored and the new end, so a shorter revocation never
-- shortens a longer one. KEYS[1] string holding until; ARGV[1] until, ARGV[2] gc grace secs.
local until_secs = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur and cur > until_secs then until_secs = cur end
redis.call('SET', KEYS[1], string.format('%d', until_secs), 'EX', gc_ttl(until_secs, tonumber(ARGV[2])))
return 1
