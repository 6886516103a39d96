-- Records a URL under one tag (surrogate key), unless the tag was purged at
-- or after the fill's lookup: its response may predate that purge.
-- KEYS[1] members (sorted set: URL digest -> until when its entry may live, ms)
-- KEYS[2] the tag's last purge time (ms)
-- ARGV[1] URL digest, ARGV[2] keep ms, ARGV[3] the fill's lookup time (ms)
-- Returns 1 when recorded, 0 when the tag was purged since.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) >= tonumber(ARGV[3]) then
  return 0
end
local keep = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', now + keep, ARGV[1])
-- Members whose entries have expired go: the set follows the live entries.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return 1
