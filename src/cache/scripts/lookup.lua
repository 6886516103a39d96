-- Looks a batch of cache slots up, taking the fill lock of each whose entry
-- is missing or stale, in one round trip.
-- KEYS, per lookup: index (hash: vary = spec, f:<variant> = fresh-until ms,
-- x:<variant> = expires ms), entry, fill lock, hit-for-miss marker, the
-- URL's generation.
-- ARGV, per lookup: spec, variant, lock token ('' = take no lock), lock ttl
-- ms, '1' = take the lock even if fresh.
-- Returns {now ms, then per lookup: lock (0 not tried, 1 acquired, 2 held,
-- 3 hit-for-miss, not taken), generation ('0': not purged lately), the
-- stored spec when it differs from the lookup's (then nothing else was
-- read; else false), entry or false}.
-- The lookups of a batch run in order: a later one sees the locks an
-- earlier one took.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 5

-- Every entry and generation of the batch in one read (reading an entry a
-- lookup then discards costs nothing).
local read = {}
for i = 1, n do
  read[2 * i - 1], read[2 * i] = KEYS[5 * i - 3], KEYS[5 * i]
end
local got = {}
for first = 1, #read, 4000 do
  local last = math.min(first + 3999, #read)
  local v = redis.call('MGET', unpack(read, first, last))
  for j = first, last do got[j] = v[j - first + 1] end
end

local out = {now}
for i = 1, n do
  local k, a = 5 * (i - 1), 5 * (i - 1)
  local spec, variant, token = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local gen = got[2 * i] or '0'
  local stored, fresh_until
  if token == '' then
    stored = redis.call('HGET', KEYS[k + 1], 'vary')
  else
    local idx = redis.call('HMGET', KEYS[k + 1], 'vary', 'f:' .. variant)
    stored, fresh_until = idx[1], idx[2]
  end
  if stored and stored ~= spec then
    out[4 * i - 2], out[4 * i - 1], out[4 * i], out[4 * i + 1] = 0, gen, stored, false
  else
    local entry = got[2 * i - 1]
    local lock = 0
    if token ~= '' then
      local fresh = false
      if entry and ARGV[a + 5] ~= '1' then
        fresh = now < (tonumber(fresh_until or '0') or 0)
      end
      if not fresh then
        if redis.call('EXISTS', KEYS[k + 4]) == 1 then
          lock = 3
        elseif redis.call('SET', KEYS[k + 3], token, 'NX', 'PX', ARGV[a + 4]) then
          lock = 1
        else
          lock = 2
        end
      end
    end
    out[4 * i - 2], out[4 * i - 1], out[4 * i], out[4 * i + 1] = lock, gen, false, entry
  end
end
return out
