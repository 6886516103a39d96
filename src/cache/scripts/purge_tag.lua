-- Starts the purge of one tag: records its time (fills that looked up
-- before it will not tag themselves with it) and returns the URLs of the
-- live entries that carry it. The URLs stay listed until their entries
-- would have expired: a purge whose reply is lost (a timeout) and is
-- retried finds them again, and purging a URL twice is harmless.
-- KEYS[1] members (sorted set: URL digest -> until when its entry may live, ms)
-- KEYS[2] the tag's last purge time (ms)
-- ARGV[1] how long the purge time is kept, ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], now, 'PX', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
