-- Drops every variant of one URL and its index.
-- KEYS[1] index, ARGV[1] key base of this URL (same hash tag)
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, 2) == 'x:' then
    n = n + redis.call('DEL', ARGV[1] .. 'e:' .. string.sub(f, 3))
  end
end
redis.call('DEL', KEYS[1])
return n
