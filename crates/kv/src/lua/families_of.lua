-- families_of: KEYS[1] subject index set; ARGV[1] family key prefix, ARGV[2] now. Returns the
-- JSON of the live families and drops ids whose family was collected by its TTL.
local now = tonumber(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. id, 'data', 'exp')
  if not f[1] then
    redis.call('SREM', KEYS[1], id)
  elseif now < (tonumber(f[2]) or now) then
    table.insert(out, f[1])
  end
end
return out
