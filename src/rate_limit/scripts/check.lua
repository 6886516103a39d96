-- Rate-limit decisions for a batch of requests, in one call.
-- The Redis home of src/rate_limit/algorithm.rs: same integer arithmetic.
--
-- ARGV[1], numbers packed as little-endian doubles: aliases: their count,
-- then pairs (index in KEYS, index of the first key of the same name). Then
-- policy sets: their count; per set: its policy count, per policy:
-- algorithm code and two parameters (GCRA and token bucket: capacity and
-- interval in µs; the others: limit and period in µs); then its number of
-- groups. Then the groups (one client under one set), set by set: a group
-- of one request is that request's cost; a group of n requests is -n
-- followed by each cost.
-- KEYS: per group, one key per policy of its set.
-- Returns per group, per request in order, per policy: remaining, reset
-- (µs), retry after (µs, -1 when this policy allows); the request was
-- allowed when every policy allows. The numbers are packed as
-- little-endian doubles (exact below 2^53) in one string: Redis converts a
-- string reply far faster than an array of integers, and so does a client.
--
-- A request is all-or-nothing: it changes state only when every policy
-- allows. Each key's state is read once, the requests of the batch are
-- decided in order against it, and it is written once at the end.
--
-- Every table and closure costs Redis an allocation per call: the script
-- keeps few of both (per-key state in one strided table).

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local floor, fmt = math.floor, string.format

-- The numbers arrive packed as little-endian doubles in ARGV[1]: unpacking
-- them is a copy, where tonumber() on a string is a strtod() each.
local blob = ARGV[1]
local total = #blob / 8
local A
if total <= 4000 then
  A = {struct.unpack('<' .. string.rep('d', total), blob)}
else
  A = {}
  local pos = 1
  for i = 1, total, 4000 do
    local m = math.min(4000, total - i + 1)
    local v = {struct.unpack('<' .. string.rep('d', m), blob, pos)}
    for j = 1, m do A[i + j - 1] = v[j] end
    pos = v[m + 1]
  end
end

-- Key state, 8 slots per key from 8k: loaded, policy, s1, s2, s3 (the
-- algorithm's state), TTL to write it with, changed, (unused).
local S = {}
local alias = {}
local a = 2
for _ = 1, A[1] do
  alias[A[a]] = A[a + 1]
  a = a + 2
end

-- Window counts (current, previous) of window `idx` from a stored window.
local function window_counts(w, c, p, idx)
  if w == idx then return c or 0, p or 0 end
  if w == idx - 1 then return 0, c or 0 end
  return 0, 0
end

-- The first elapsed time in a window at which floor(weight * (w - e) / w) <= lim.
local function decayed_at(weight, lim, w)
  if weight <= lim then return 0 end
  return floor(w - (lim + 1) * w / weight) + 1
end

-- Reads key k's state (policy parameters at P[p..p+2]).
local P = {}
local function load(k, b)
  local key, alg = KEYS[k], P[S[b + 1]]
  if alg == 1 then
    S[b + 2] = tonumber(redis.call('GET', key))
  elseif alg == 5 then
    local v = redis.call('HMGET', key, 't', 'l')
    S[b + 2], S[b + 3] = tonumber(v[1]), tonumber(v[2])
  elseif alg == 2 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt('%d', now - P[S[b + 1] + 2]))
    local count = redis.call('ZCARD', key)
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    S[b + 2], S[b + 3], S[b + 4] = count, tonumber(newest[2]), count
  else
    local v = redis.call('HMGET', key, 'w', 'c', 'p')
    S[b + 2], S[b + 3], S[b + 4] = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  end
  S[b] = true
end

-- Decides `cost` under policy p against state (x, y, z) of key k. Returns:
-- allowed, remaining, reset, retry, then the state after it (when allowed).
local function decide(k, p, x, y, z, cost)
  local alg = P[p]
  -- (capacity, interval) or (limit, period)
  local cap, t = P[p + 1], P[p + 2]
  local limit, period = cap, t
  if alg == 1 then -- GCRA: x = theoretical arrival time
    local tau = t * cap
    local tat = x
    if not tat or tat < now then tat = now end
    local new_tat = tat + cost * t
    local allow_at = new_tat - tau
    if now < allow_at then
      local rem = tau + now - tat
      if rem < 0 then rem = 0 end
      return false, floor(rem / t), tat - now, allow_at - now
    end
    return true, floor((tau + now - new_tat) / t), new_tat - now, 0, new_tat
  elseif alg == 5 then -- token bucket: x tokens at time y
    local tokens, last = x, y
    if not tokens or not last then tokens = cap; last = now end
    if now > last then
      local add = floor((now - last) / t)
      tokens = tokens + add
      last = last + add * t
    end
    if tokens >= cap then tokens = cap; last = now end
    -- Time until `missing` more tokens have dripped in.
    if tokens >= cost then
      local left = tokens - cost
      local reset = (cap - left) * t + last - now
      if reset < 0 then reset = 0 end
      return true, left, reset, 0, left, last
    end
    local reset = (cap - tokens) * t + last - now
    local retry = (cost - tokens) * t + last - now
    if reset < 0 then reset = 0 end
    if retry < 0 then retry = 0 end
    return false, tokens, reset, retry
  elseif alg == 4 then -- fixed window: (window, count)
    local idx = floor(now / period)
    local count = window_counts(x, y, z, idx)
    local reset = (idx + 1) * period - now
    if count + cost <= limit then
      return true, limit - count - cost, reset, 0, idx, count + cost, 0
    end
    local rem = limit - count
    if rem < 0 then rem = 0 end
    return false, rem, reset, reset
  elseif alg == 3 then -- sliding window counter: (window, count, previous count)
    local w = period
    local idx = floor(now / w)
    local cur, prev = window_counts(x, y, z, idx)
    local elapsed = now - idx * w
    local used = floor(prev * (w - elapsed) / w) + cur
    if used + cost <= limit then
      local reset = 0
      if cur + cost > 0 then reset = (idx + 2) * w - now
      elseif prev > 0 then reset = (idx + 1) * w - now end
      return true, limit - used - cost, reset, 0, idx, cur + cost, prev
    end
    local retry
    if cur + cost <= limit then
      retry = decayed_at(prev, limit - cur - cost, w) - elapsed
    else
      retry = (idx + 1) * w - now + decayed_at(cur, limit - cost, w)
    end
    if retry < 1 then retry = 1 end
    local rem = limit - used
    if rem < 0 then rem = 0 end
    local reset = 0
    if cur > 0 then reset = (idx + 2) * w - now
    elseif prev > 0 then reset = (idx + 1) * w - now end
    return false, rem, reset, retry
  end
  -- sliding log: x entries (those of the set and those added in this
  -- batch), the newest at y, z in the set
  local count, newest, base, w = x, y, z, period
  if count + cost <= limit then
    local reset = 0
    if cost > 0 then
      reset = w
      newest = now
    elseif newest then
      reset = newest + w - now
    end
    return true, limit - count - cost, reset, 0, count + cost, newest, base
  end
  -- The entry whose leaving lets the request pass: one of the set's, or
  -- one added in this batch (at `now`, it leaves a whole window later).
  local need = count + cost - limit
  local retry = w
  if need <= base then
    local e = redis.call('ZRANGE', KEYS[k], need - 1, need - 1, 'WITHSCORES')
    if e[2] then retry = tonumber(e[2]) + w - now end
  end
  local rem = limit - count
  if rem < 0 then rem = 0 end
  local reset = 0
  if newest then reset = newest + w - now end
  return false, rem, reset, retry
end

local function save(k, b)
  local key, p = KEYS[k], S[b + 1]
  local alg = P[p]
  local px = fmt('%d', floor(S[b + 5] / 1000) + 1)
  if alg == 1 then
    redis.call('PSETEX', key, px, fmt('%d', S[b + 2]))
  elseif alg == 5 then
    redis.call('HSET', key, 't', fmt('%d', S[b + 2]), 'l', fmt('%d', S[b + 3]))
    redis.call('PEXPIRE', key, px)
  elseif alg == 2 then
    -- Members `now:n`, n counting on from the entries before: unique.
    local args, n, at = {}, 0, fmt('%d', now)
    for i = S[b + 4] + 1, S[b + 2] do
      args[n + 1] = at
      args[n + 2] = at .. ':' .. fmt('%d', i)
      n = n + 2
      if n >= 1000 or i == S[b + 2] then
        redis.call('ZADD', key, unpack(args, 1, n))
        n = 0
      end
    end
    redis.call('PEXPIRE', key, fmt('%d', floor(P[p + 2] / 1000) + 1))
  else
    redis.call('HSET', key, 'w', fmt('%d', S[b + 2]), 'c', fmt('%d', S[b + 3]),
      'p', fmt('%d', S[b + 4]))
    redis.call('PEXPIRE', key, px)
  end
end

-- Policy sets: parameters in P (3 per policy); per set (in R) its first
-- policy, policy count and group count.
local sets = A[a]
a = a + 1
local R = {}
local np, all_gcra = 1, true
for s = 1, sets do
  local n = A[a]
  a = a + 1
  R[3 * s - 2], R[3 * s - 1] = np, n
  for _ = 1, n do
    local alg = A[a]
    P[np], P[np + 1], P[np + 2] = alg, A[a + 1], A[a + 2]
    if alg ~= 1 then all_gcra = false end
    np, a = np + 3, a + 3
  end
  R[3 * s] = A[a]
  a = a + 1
end

-- Only GCRA keys: read them all at once.
local gcra = nil
if all_gcra and #KEYS > 0 and #KEYS <= 4000 then gcra = redis.call('MGET', unpack(KEYS)) end

local out, n, k = {}, 0, 0
-- Per-policy results of the current request: 7 slots per policy in Q.
local Q = {}
local no_alias = next(alias) == nil
for s = 1, sets do
  local first, npol = R[3 * s - 2], R[3 * s - 1]
  for _ = 1, R[3 * s] do
    local items = A[a]
    if items < 0 then
      items = -items
      a = a + 1
    else
      items = 1
    end
    if gcra and npol == 1 and no_alias then
      -- The common case: one GCRA policy, its key read already (MGET),
      -- written here; no per-key state kept.
      k = k + 1
      local tat = tonumber(gcra[k])
      local changed = false
      for _ = 1, items do
        local cost = A[a]
        a = a + 1
        local ok, rem, reset, retry, new_tat = decide(k, first, tat, nil, nil, cost)
        if ok then
          retry = -1
          if cost > 0 then
            tat, changed = new_tat, true
          end
        end
        out[n + 1], out[n + 2], out[n + 3] = rem, reset, retry
        n = n + 3
      end
      if changed then
        redis.call('PSETEX', KEYS[k], fmt('%d', floor((tat - now) / 1000) + 1), fmt('%d', tat))
      end
    else
      -- The group's keys: k + 1 .. k + npol.
      for j = 1, npol do
        local kk = k + j
        local b = 8 * (alias[kk] or kk)
        if not S[b] then
          S[b + 1] = first + 3 * (j - 1)
          if gcra then
            S[b + 2], S[b] = tonumber(gcra[kk]), true
          else
            load(alias[kk] or kk, b)
          end
        end
      end
      for _ = 1, items do
        local cost = A[a]
        a = a + 1
        local all = true
        for j = 1, npol do
          local kk = k + j
          local b = 8 * (alias[kk] or kk)
          local ok, rem, reset, retry, x, y, z = decide(alias[kk] or kk,
            first + 3 * (j - 1), S[b + 2], S[b + 3], S[b + 4], cost)
          local q = 7 * j
          Q[q], Q[q + 1], Q[q + 2], Q[q + 3], Q[q + 4], Q[q + 5], Q[q + 6] =
            ok, rem, reset, retry, x, y, z
          if not ok then all = false end
        end
        for j = 1, npol do
          local q = 7 * j
          if all and cost > 0 then
            local kk = k + j
            local b = 8 * (alias[kk] or kk)
            S[b + 2], S[b + 3], S[b + 4], S[b + 5], S[b + 6] =
              Q[q + 4], Q[q + 5], Q[q + 6], Q[q + 2], true
          end
          local rem = Q[q + 1]
          if Q[q] and not all then rem = rem + cost end
          out[n + 1] = rem
          out[n + 2] = Q[q + 2]
          if Q[q] then out[n + 3] = -1 else out[n + 3] = Q[q + 3] end
          n = n + 3
        end
      end
      k = k + npol
    end
  end
end
for kk = 1, k do
  local b = 8 * kk
  if S[b + 6] then save(kk, b) end
end
if n <= 4000 then
  return struct.pack('<' .. string.rep('d', n), unpack(out, 1, n))
end
local parts = {}
for i = 1, n, 4000 do
  local j = math.min(i + 3999, n)
  parts[#parts + 1] = struct.pack('<' .. string.rep('d', j - i + 1), unpack(out, i, j))
end
return table.concat(parts)
