-- Shared prelude. Token bucket in a hash {tokens, ts} (ts in ms), shared by take_token and admit
-- so that both take from a bucket identically. The arithmetic, operation order included, is the
-- in-memory adapter's, so both agree to the bit; tokens are stored with 17 significant digits,
-- which round-trips a double exactly.
-- Returns 1, remaining or 0, retry_after_ms.
local function take_bucket(key, rate, burst, now)
  local f = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(f[1])
  local ts = tonumber(f[2])
  if not tokens or not ts then
    tokens = burst
    ts = now
  end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate / 1000)
  if now > ts then ts = now end
  local allowed, n
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
    n = math.floor(tokens)
  else
    allowed = 0
    n = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
  -- Once full again the bucket equals an absent one, so it may be collected then.
  local ttl = math.ceil((burst - tokens) * 1000 / rate) + (ts - now)
  if ttl < 1000 then ttl = 1000 end
  redis.call('PEXPIRE', key, string.format('%d', ttl))
  return allowed, n
end
