-- admit: the gateway's per-request checks in one round trip, atomic like every script: the reads
-- of is_jti_revoked and tokens_revoked_before, then take_bucket (the prelude) per bucket.
-- KEYS[1..r] revocation strings holding until (jti:<jti>, jti:sid:<session>),
-- KEYS[r+1] the user's hash {ts, keep} of revoke_tokens_before, KEYS[r+2..] bucket hashes;
-- ARGV[1] r, ARGV[2] now (secs), ARGV[3] issued_at, ARGV[4] now_ms, then per_sec and burst of
-- each bucket, in the order of the bucket keys.
-- Returns {0, 0} allowed, {1, 0} revoked, {2, retry_after_ms} throttled.

-- A stored time that is present but no number was not written by this adapter. The separate
-- reads fail on it (the driver cannot decode it); so does this, rather than admit past it.
local function stored_time(v)
  if not v then return nil end
  local t = tonumber(v)
  if not t then error({err = 'EHRCORRUPT a stored revocation time is not a number'}) end
  return t
end

local r = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
for i = 1, r do
  local until_secs = stored_time(redis.call('GET', KEYS[i]))
  if until_secs and now < until_secs then return {1, 0} end
end
local f = redis.call('HMGET', KEYS[r + 1], 'ts', 'keep')
local ts = stored_time(f[1])
local keep = stored_time(f[2])
if ts and keep and now < keep and tonumber(ARGV[3]) < ts then return {1, 0} end

-- Not revoked: take from each bucket in order; the first empty one stops the walk, and the
-- buckets before it keep the token they gave (as separate take_token calls would).
local now_ms = tonumber(ARGV[4])
for i = r + 2, #KEYS do
  local arg = 5 + 2 * (i - r - 2)
  local allowed, n = take_bucket(KEYS[i], tonumber(ARGV[arg]), tonumber(ARGV[arg + 1]), now_ms)
  if allowed == 0 then return {2, n} end
end
return {0, 0}
