-- revoke_subject: KEYS[1] subject index set; ARGV[1] family key prefix. Returns how many
-- families were still stored.
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return n
