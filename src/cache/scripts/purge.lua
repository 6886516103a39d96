-- Drops every variant of one URL and its index, and advances the URL's
-- generation so that no fill that looked up before this can land.
-- KEYS[1] index, KEYS[2] generation, ARGV[1] key base of this URL (same hash tag),
-- ARGV[2] invalidation channel, ARGV[3] '-|<URL digest>' (published: in-process copies are dropped),
-- ARGV[4] how long the generation is kept, ms (longer than any fill that may still land)
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'x:' then
    n = n + redis.call('DEL', ARGV[1] .. 'e:' .. string.sub(f, 3))
  end
end
redis.call('DEL', KEYS[1])
-- Microseconds of the server's clock, and always above the last one.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
redis.call('SET', KEYS[2], string.format('%.0f', math.max(now, old + 1)), 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
