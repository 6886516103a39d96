-- Writes one cache entry into the URL's index, caps the variants and
-- releases the writer's fill lock; writes nothing if the URL was purged
-- since the writer's lookup (its generation moved) or that lookup is too old.
-- KEYS[1] the URL's index (hash, see lookup.lua), KEYS[2] fill lock,
-- KEYS[3] the URL's entry key and KEYS[4] its soft-purged copy (used when
-- the URL has no Vary spec: see lookup.lua)
-- ARGV[1] spec, ARGV[2] variant, ARGV[3] entry bytes, ARGV[4] fresh-until ms,
-- ARGV[5] keep ms, ARGV[6] lock token ('' = none), ARGV[7] max variants,
-- ARGV[8] invalidation channel, ARGV[9] '<writer>|<URL digest>' (published: in-process copies are dropped),
-- ARGV[10] generation seen by the writer's lookup, ARGV[11] that lookup's time ms,
-- ARGV[12] the oldest lookup a fill may come from, ms,
-- ARGV[13] the entry's strong ETag ('' = none; kept as t:<variant>)
-- Returns 1 when written, 0 when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index, variant = KEYS[1], ARGV[2]
local function unlock()
  if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[6] then
    redis.call('DEL', KEYS[2])
  end
end
-- HDEL in bounded batches (Lua's unpack has a stack limit).
local function hdel(fields)
  for first = 1, #fields, 1000 do
    redis.call('HDEL', index, unpack(fields, first, math.min(first + 999, #fields)))
  end
end
if (redis.call('HGET', index, 'g') or '0') ~= ARGV[10]
    or now - tonumber(ARGV[11]) > tonumber(ARGV[12]) then
  unlock()
  return 0
end
local names = redis.call('HKEYS', index)
local head = redis.call('HMGET', index, 'vary', 'sp')
local old, soft = head[1], head[2]
local gone = {}
if old and old ~= ARGV[1] then
  -- The URL's Vary changed: the old variants are keyed on other headers.
  -- The generation stays.
  for _, f in ipairs(names) do
    if f ~= 'g' then table.insert(gone, f) end
  end
  hdel(gone)
  names, gone = {}, {}
end
local keep = tonumber(ARGV[5])
if ARGV[1] == '' then
  -- One variant: the entry is a key of its own, read by a hit with a plain
  -- GET (one MGET per batch), living as long as the entry may be kept.
  redis.call('SET', KEYS[3], ARGV[3], 'PX', keep)
  redis.call('HSET', index, 'vary', '', 'f:' .. variant, ARGV[4], 'x:' .. variant, now + keep)
  table.insert(gone, 'e:' .. variant)
else
  -- Even with no index left (evicted), no entry of the URL without Vary
  -- may answer for a URL that now varies.
  redis.call('DEL', KEYS[3])
  redis.call('HSET', index, 'vary', ARGV[1], 'e:' .. variant, ARGV[3],
    'f:' .. variant, ARGV[4], 'x:' .. variant, now + keep)
end
-- A soft-purged copy (field sp, see purge_urls.lua) is superseded by any write.
if soft then
  redis.call('DEL', KEYS[4])
  table.insert(gone, 'sp')
end
if ARGV[13] ~= '' then
  redis.call('HSET', index, 't:' .. variant, ARGV[13])
else
  table.insert(gone, 't:' .. variant)
end
-- The other variants: expired ones go, then past the cap those that expire first.
local others = {}
for _, f in ipairs(names) do
  if string.sub(f, 1, 2) == 'x:' and string.sub(f, 3) ~= variant then
    table.insert(others, f)
  end
end
local live = {}
for first = 1, #others, 1000 do
  local last = math.min(first + 999, #others)
  local exps = redis.call('HMGET', index, unpack(others, first, last))
  for j = first, last do
    local v, exp = string.sub(others[j], 3), tonumber(exps[j - first + 1]) or 0
    if exp <= now then
      table.insert(gone, 'e:' .. v)
      table.insert(gone, 'f:' .. v)
      table.insert(gone, 't:' .. v)
      table.insert(gone, others[j])
    else
      table.insert(live, {exp, v})
    end
  end
end
local over = #live + 1 - tonumber(ARGV[7])
if over > 0 then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  for i = 1, math.min(over, #live) do
    local v = live[i][2]
    table.insert(gone, 'e:' .. v)
    table.insert(gone, 'f:' .. v)
    table.insert(gone, 't:' .. v)
    table.insert(gone, 'x:' .. v)
  end
end
hdel(gone)
-- The index lives as long as its longest-lived variant (and its generation).
if redis.call('PTTL', index) < keep then
  redis.call('PEXPIRE', index, keep)
end
unlock()
redis.call('PUBLISH', ARGV[8], ARGV[9])
return 1
