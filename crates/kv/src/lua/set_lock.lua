-- set_lock: KEYS[1] string holding until; ARGV[1] until, ARGV[2] gc grace secs.
redis.call('SET', KEYS[1], ARGV[1], 'EX', gc_ttl(tonumber(ARGV[1]), tonumber(ARGV[2])))
return 1
