-- Starts the purge of one tag: records its time (fills that looked up
-- before it will not tag themselves with it) and returns the URLs of the
-- live entries that carry it; a hard purge forgets them, a soft one keeps
-- them (the entries stay, stale).
-- KEYS[1] members (sorted set: URL digest -> until when its entry may live, ms)
-- KEYS[2] the tag's last purge time (ms)
-- ARGV[1] '1' = soft, ARGV[2] how long the purge time is kept, ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[2], now, 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local urls = redis.call('ZRANGE', KEYS[1], 0, -1)
if ARGV[1] ~= '1' then
  redis.call('DEL', KEYS[1])
end
return urls
