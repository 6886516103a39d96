-- Purges URLs of one cluster slot: drops every variant (or, soft, marks
-- each stale so the next lookup takes the fill lock) and advances each
-- URL's generation, so that no fill that looked up before lands and, soft,
-- entries stored before read as stale.
-- KEYS: per URL its index (hash, see lookup.lua; the generation is its
-- field g), entry key and soft-purged copy (see lookup.lua)
-- ARGV[1] '1' = soft, ARGV[2] invalidation channel, ARGV[3] how long a
-- generation is kept at least, ms; then each URL's digest
-- Returns the number of live entries dropped or marked.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local soft = ARGV[1] == '1'
local n = 0
for i = 1, #KEYS / 3 do
  local index, own, purged = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local keep = tonumber(ARGV[3])
  local old = tonumber(redis.call('HGET', index, 'g') or '0') or 0
  local gen = string.format('%.0f', math.max(now_us, old + 1))
  -- Each variant's fresh-until and expiry, read in bounded batches.
  local names = {}
  for _, f in ipairs(redis.call('HKEYS', index)) do
    if string.sub(f, 1, 2) == 'x:' then
      local v = string.sub(f, 3)
      table.insert(names, 'f:' .. v)
      table.insert(names, f)
    end
  end
  -- Soft: the new generation and each fresh variant marked stale, in one HSET.
  local marks = {'g', gen}
  for first = 1, #names, 1000 do
    local last = math.min(first + 999, #names)
    local vals = redis.call('HMGET', index, unpack(names, first, last))
    for j = first, last, 2 do
      local fresh_until = tonumber(vals[j - first + 1]) or 0
      if (tonumber(vals[j - first + 2]) or 0) > now then
        n = n + 1
        if fresh_until > now then
          table.insert(marks, names[j])
          table.insert(marks, now)
        end
      end
    end
  end
  if soft then
    -- A URL without Vary: its entry moves aside (plain reads no longer see
    -- it; lookups that may take the lock read it stale by the generation),
    -- and the index says so (field sp).
    if redis.call('EXISTS', own) == 1 then
      redis.call('RENAME', own, purged)
      table.insert(marks, 'sp')
      table.insert(marks, '1')
    end
    for first = 1, #marks, 1000 do
      redis.call('HSET', index, unpack(marks, first, math.min(first + 999, #marks)))
    end
    -- Kept while a marked entry lives: it reads stale by the generation.
    if redis.call('PTTL', index) < keep then
      redis.call('PEXPIRE', index, keep)
    end
  else
    redis.call('DEL', index, own, purged)
    redis.call('HSET', index, 'g', gen)
    redis.call('PEXPIRE', index, keep)
  end
  redis.call('PUBLISH', ARGV[2], '-|' .. ARGV[3 + i])
end
return n
