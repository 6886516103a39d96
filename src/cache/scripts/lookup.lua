-- Looks one cache slot up, taking the fill lock when its entry is missing or
-- stale, in one round trip.
-- KEYS[1] index (hash: vary = spec, f:<variant> = fresh-until ms, x:<variant> = expires ms)
-- KEYS[2] entry, KEYS[3] fill lock, KEYS[4] hit-for-miss marker, KEYS[5] the URL's generation
-- ARGV[1] spec, ARGV[2] variant, ARGV[3] lock token ('' = take no lock),
-- ARGV[4] lock ttl ms, ARGV[5] '1' = take the lock even if fresh
-- Returns {now ms, spec, entry or nil,
--          lock: 0 not tried, 1 acquired, 2 held, 3 hit-for-miss (not taken),
--          generation ('0': not purged lately)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = redis.call('HMGET', KEYS[1], 'vary', 'f:' .. ARGV[2])
local gen = redis.call('GET', KEYS[5]) or '0'
local spec = idx[1]
if spec and spec ~= ARGV[1] then
  return {now, spec, false, 0, gen}
end
local entry = redis.call('GET', KEYS[2])
local lock = 0
if ARGV[3] ~= '' then
  local fresh = false
  if entry and ARGV[5] ~= '1' then
    fresh = now < (tonumber(idx[2] or '0') or 0)
  end
  if not fresh then
    if redis.call('EXISTS', KEYS[4]) == 1 then
      lock = 3
    elseif redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
      lock = 1
    else
      lock = 2
    end
  end
end
return {now, ARGV[1], entry, lock, gen}
