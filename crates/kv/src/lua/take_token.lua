-- take_token: one token from a bucket (take_bucket, in the prelude).
-- KEYS[1] bucket hash; ARGV[1] per_sec, ARGV[2] burst, ARGV[3] now_ms.
-- Returns {1, remaining} or {0, retry_after_ms}.
local allowed, n = take_bucket(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
return {allowed, n}
