-- The rate-limit algorithms on Redis state: the first part of the check
-- script (with lease.lua and check.lua after it, in one script). The Redis
-- home of src/rate_limit/algorithm.rs: same integer arithmetic.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local floor, fmt = math.floor, string.format

-- Key state, 8 slots per key from 8k: loaded, policy, s1, s2, s3 (the
-- algorithm's state), TTL to write it with, changed, (unused).
local S = {}

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

-- A token bucket's tokens and time of its last whole drip, now.
local function tokens_at(cap, t, tokens, last)
  if not tokens or not last then return cap, now end
  if now > last then
    local add = floor((now - last) / t)
    tokens = tokens + add
    last = last + add * t
  end
  if tokens >= cap then return cap, now end
  return tokens, last
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
    local tokens, last = tokens_at(cap, t, x, y)
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

-- The absolute expiry (ms) of a state that lasts `us` from now. Hashes
-- and sets expire with PEXPIREAT: Redis rewrites a relative PEXPIRE into
-- an absolute one for its replicas, a copy of the command each time
-- (callgrind: 8.6k instructions per call against 4.9k). A string's PSETEX
-- is rewritten too, but SET … PXAT costs as much (it parses its options
-- and is rewritten all the same).
local function expiry(us)
  return fmt('%d', floor((now + us) / 1000) + 1)
end

local function save(k, b)
  local key, p = KEYS[k], S[b + 1]
  local alg = P[p]
  if alg == 1 then
    redis.call('PSETEX', key, fmt('%d', floor(S[b + 5] / 1000) + 1), fmt('%d', S[b + 2]))
  elseif alg == 5 then
    redis.call('HSET', key, 't', fmt('%d', S[b + 2]), 'l', fmt('%d', S[b + 3]))
    redis.call('PEXPIREAT', key, expiry(S[b + 5]))
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
    redis.call('PEXPIREAT', key, expiry(P[p + 2]))
  else
    redis.call('HSET', key, 'w', fmt('%d', S[b + 2]), 'c', fmt('%d', S[b + 3]),
      'p', fmt('%d', S[b + 4]))
    redis.call('PEXPIREAT', key, expiry(S[b + 5]))
  end
end
