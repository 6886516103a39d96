-- Drops every variant of one URL and its index.
-- KEYS[1] index, ARGV[1] key base of this URL (same hash tag),
-- ARGV[2] invalidation channel, ARGV[3] '-|<URL digest>' (published: in-process copies are dropped)
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'x:' then
    n = n + redis.call('DEL', ARGV[1] .. 'e:' .. string.sub(f, 3))
  end
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
