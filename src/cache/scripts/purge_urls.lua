-- Purges several URLs of one cluster slot: drops every variant (or, soft,
-- marks each stale in the index so the next lookup takes the fill lock)
-- and advances each URL's generation, so that no fill that looked up
-- before lands and, soft, entries stored before read as stale.
-- KEYS: for each URL, its index then its generation
-- ARGV[1] '1' = soft, ARGV[2] invalidation channel, ARGV[3] how long a
-- generation is kept at least, ms; then for each URL its key base and digest
-- Returns the number of entries dropped or marked.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local soft = ARGV[1] == '1'
local n = 0
for i = 1, #KEYS / 2 do
  local index, gen = KEYS[2 * i - 1], KEYS[2 * i]
  local base, url = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local keep = tonumber(ARGV[3])
  if soft then
    local fields = redis.call('HGETALL', index)
    for j = 1, #fields, 2 do
      if string.sub(fields[j], 1, 2) == 'f:' then
        if (tonumber(fields[j + 1]) or 0) > now then
          redis.call('HSET', index, fields[j], now)
        end
        n = n + 1
      end
    end
    -- Kept while a marked entry lives: it reads stale by the generation.
    keep = math.max(keep, redis.call('PTTL', index))
  else
    for _, f in ipairs(redis.call('HKEYS', index)) do
      if string.sub(f, 1, 2) == 'x:' then
        n = n + redis.call('DEL', base .. 'e:' .. string.sub(f, 3))
      end
    end
    redis.call('DEL', index)
  end
  local old = tonumber(redis.call('GET', gen) or '0') or 0
  redis.call('SET', gen, string.format('%.0f', math.max(now_us, old + 1)), 'PX', keep)
  redis.call('PUBLISH', ARGV[2], '-|' .. url)
end
return n
