-- Writes one cache entry, records it in the URL's index, caps the variants
-- and releases the writer's fill lock; writes nothing if the URL was purged
-- since the writer's lookup (its generation moved) or that lookup is too old.
-- KEYS[1] index, KEYS[2] entry, KEYS[3] fill lock, KEYS[4] the URL's generation
-- ARGV[1] spec, ARGV[2] variant, ARGV[3] entry bytes, ARGV[4] fresh-until ms,
-- ARGV[5] keep ms, ARGV[6] lock token ('' = none), ARGV[7] max variants,
-- ARGV[8] key base of this URL (entries are base .. 'e:' .. variant, same hash tag),
-- ARGV[9] invalidation channel, ARGV[10] '<writer>|<URL digest>' (published: in-process copies are dropped),
-- ARGV[11] generation seen by the writer's lookup, ARGV[12] that lookup's time ms,
-- ARGV[13] the oldest lookup a fill may come from, ms
-- Returns 1 when written, 0 when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if (redis.call('GET', KEYS[4]) or '0') ~= ARGV[11]
    or now - tonumber(ARGV[12]) > tonumber(ARGV[13]) then
  if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then
    redis.call('DEL', KEYS[3])
  end
  return 0
end
local base = ARGV[8]
local old = redis.call('HGET', KEYS[1], 'vary')
if old and old ~= ARGV[1] then
  -- The URL's Vary changed: the old variants are keyed on other headers.
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 2) == 'x:' then
      redis.call('DEL', base .. 'e:' .. string.sub(f, 3))
    end
  end
  redis.call('DEL', KEYS[1])
end
local keep = tonumber(ARGV[5])
redis.call('SET', KEYS[2], ARGV[3], 'PX', keep)
redis.call('HSET', KEYS[1], 'vary', ARGV[1], 'f:' .. ARGV[2], ARGV[4], 'x:' .. ARGV[2], now + keep)
local fields = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'x:' then
    local v = string.sub(f, 3)
    local exp = tonumber(fields[i + 1]) or 0
    if exp <= now then
      redis.call('HDEL', KEYS[1], f, 'f:' .. v)
    else
      table.insert(live, {exp, v})
    end
  end
end
local max = tonumber(ARGV[7])
if #live > max then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local drop = #live - max
  for i = 1, #live do
    if drop == 0 then break end
    local v = live[i][2]
    if v ~= ARGV[2] then
      redis.call('DEL', base .. 'e:' .. v)
      redis.call('HDEL', KEYS[1], 'x:' .. v, 'f:' .. v)
      drop = drop - 1
    end
  end
end
-- The index lives as long as its longest-lived variant.
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then
  redis.call('DEL', KEYS[3])
end
redis.call('PUBLISH', ARGV[9], ARGV[10])
return 1
