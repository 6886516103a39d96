-- Looks a batch of cache slots up, taking the fill lock of each whose entry
-- is missing or stale, in one round trip.
-- KEYS, per lookup: the URL's index, fill lock, hit-for-miss marker,
-- entry key, soft-purged copy. The index is a hash holding the URL's
-- state: vary = spec, g = the URL's generation, and per variant
-- e:<variant> = entry, f:<variant> = fresh-until ms, x:<variant> =
-- expires ms, t:<variant> = the entry's strong ETag, if it has one
-- (fields have no TTL of their own: an entry past its x: time is absent,
-- and its fields are dropped). A URL without Vary (spec '') keeps its one
-- entry in the entry key instead, with the entry's TTL, so that a hit is
-- one plain GET; a soft purge renames it to the soft-purged copy and sets
-- the index's field sp.
-- ARGV, per lookup: spec, variant, lock token ('' = take no lock), lock ttl
-- ms, '1' = take the lock even if fresh.
-- Returns {now ms, then per lookup: lock (0 not tried, 1 acquired, 2 held,
-- 3 hit-for-miss, not taken), generation ('0': not purged lately), the
-- stored spec when it differs from the lookup's (then no entry is
-- returned; else false), entry or false}.
-- The lookups of a batch run in order: a later one sees the locks an
-- earlier one took.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local out = {now}
for i = 1, #KEYS / 5 do
  local k, a, o = 5 * (i - 1), 5 * (i - 1), 4 * i - 2
  local index = KEYS[k + 1]
  local spec, variant, token = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local f, x, e = 'f:' .. variant, 'x:' .. variant, 'e:' .. variant
  local idx = redis.call('HMGET', index, 'vary', 'g', f, x, e, 'sp')
  local stored, gen, fresh_until, entry = idx[1], idx[2] or '0', idx[3], idx[5]
  if stored and stored ~= spec then
    out[o], out[o + 1], out[o + 2], out[o + 3] = 0, gen, stored, false
  else
    local own = false
    -- Read only where the index has the entry's times (a miss reads none).
    if not entry and spec == '' and idx[4] then
      entry = redis.call('GET', KEYS[k + 4])
      if not entry and idx[6] then
        entry = redis.call('GET', KEYS[k + 5])
      end
      own = entry ~= false
    end
    if entry and not own and now >= (tonumber(idx[4] or '0') or 0) then
      redis.call('HDEL', index, e, f, x, 't:' .. variant)
      entry = false
    end
    local lock = 0
    if token ~= '' then
      local fresh = false
      if entry and ARGV[a + 5] ~= '1' then
        fresh = now < (tonumber(fresh_until or '0') or 0)
      end
      if not fresh then
        if redis.call('EXISTS', KEYS[k + 3]) == 1 then
          lock = 3
        elseif redis.call('SET', KEYS[k + 2], token, 'NX', 'PX', ARGV[a + 4]) then
          lock = 1
        else
          lock = 2
        end
      end
    end
    out[o], out[o + 1], out[o + 2], out[o + 3] = lock, gen, false, entry or false
  end
end
return out
