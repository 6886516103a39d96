-- Rate-limit decisions for a batch of requests, in one call.
-- The Redis home of src/rate_limit/algorithm.rs: same integer arithmetic.
--
-- KEYS: one per policy per request, in order.
-- ARGV[1]: number of requests; then per request: cost, policy count, and per
-- policy: algorithm code, capacity, limit, period (µs), interval (µs).
-- Returns per request: allowed (1/0), then per policy: remaining, reset (µs),
-- retry after (µs, -1 when this policy allows).
-- A request is all-or-nothing: state is written only when every policy allows.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = math.floor

local function num(x)
  return string.format('%d', x)
end

local function window_counts(key, idx)
  local v = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if w == idx then return c, p end
  if w == idx - 1 then return 0, c end
  return 0, 0
end

local function decayed_at(weight, a, w)
  if weight <= a then return 0 end
  return floor(w - (a + 1) * w / weight) + 1
end

-- Each returns: allowed, remaining, reset, retry, then the state to commit.
local peek = {}

peek[1] = function(key, cost, cap, limit, period, t) -- GCRA
  local tau = t * cap
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * t
  local allow_at = new_tat - tau
  if now < allow_at then
    local rem = tau + now - tat
    if rem < 0 then rem = 0 end
    return false, floor(rem / t), tat - now, allow_at - now
  end
  return true, floor((tau + now - new_tat) / t), new_tat - now, 0, new_tat
end

peek[5] = function(key, cost, cap, limit, period, t) -- token bucket
  local v = redis.call('HMGET', key, 't', 'l')
  local tokens, last = tonumber(v[1]), tonumber(v[2])
  if not tokens or not last then tokens = cap; last = now end
  if now > last then
    local add = floor((now - last) / t)
    tokens = tokens + add
    last = last + add * t
  end
  if tokens >= cap then tokens = cap; last = now end
  local function refill(missing)
    local d = missing * t + last - now
    if d < 0 then return 0 end
    return d
  end
  if tokens >= cost then
    local left = tokens - cost
    return true, left, refill(cap - left), 0, left, last
  end
  return false, tokens, refill(cap - tokens), refill(cost - tokens)
end

peek[4] = function(key, cost, cap, limit, period, t) -- fixed window
  local idx = floor(now / period)
  local count = window_counts(key, idx)
  local reset = (idx + 1) * period - now
  if count + cost <= limit then
    return true, limit - count - cost, reset, 0, idx, count + cost, 0
  end
  local rem = limit - count
  if rem < 0 then rem = 0 end
  return false, rem, reset, reset
end

peek[3] = function(key, cost, cap, limit, period, t) -- sliding window counter
  local w = period
  local idx = floor(now / w)
  local cur, prev = window_counts(key, idx)
  local elapsed = now - idx * w
  local weighted = floor(prev * (w - elapsed) / w)
  local used = weighted + cur
  local function reset_for(c)
    if c > 0 then return (idx + 2) * w - now end
    if prev > 0 then return (idx + 1) * w - now end
    return 0
  end
  if used + cost <= limit then
    return true, limit - used - cost, reset_for(cur + cost), 0, idx, cur + cost, prev
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
  return false, rem, reset_for(cur), retry
end

peek[2] = function(key, cost, cap, limit, period, t) -- sliding log
  local w = period
  redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now - w))
  local count = redis.call('ZCARD', key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if count + cost <= limit then
    local reset = 0
    if cost > 0 then reset = w elseif newest[2] then reset = tonumber(newest[2]) + w - now end
    return true, limit - count - cost, reset, 0, count
  end
  local need = count + cost - limit
  local retry = w
  local e = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
  if e[2] then retry = tonumber(e[2]) + w - now end
  local rem = limit - count
  if rem < 0 then rem = 0 end
  local reset = 0
  if newest[2] then reset = tonumber(newest[2]) + w - now end
  return false, rem, reset, retry
end

-- Arguments go to Redis as strings formatted here: Redis's own conversion
-- of Lua numbers is slower and would print large ones in exponent form.
local function px(us)
  return string.format('%d', floor(us / 1000) + 1)
end

local function commit(alg, key, cost, reset, period, s1, s2, s3)
  if alg == 1 then
    redis.call('PSETEX', key, px(reset), num(s1))
  elseif alg == 5 then
    redis.call('HSET', key, 't', num(s1), 'l', num(s2))
    redis.call('PEXPIRE', key, px(reset))
  elseif alg == 2 then
    local args, n = {}, 0
    for i = 1, cost do
      args[n + 1] = num(now)
      args[n + 2] = num(now) .. ':' .. num(s1 + i)
      n = n + 2
      if n >= 1000 or i == cost then
        redis.call('ZADD', key, unpack(args, 1, n))
        n = 0
      end
    end
    redis.call('PEXPIRE', key, px(period))
  else
    redis.call('HSET', key, 'w', num(s1), 'c', num(s2), 'p', num(s3))
    redis.call('PEXPIRE', key, px(reset))
  end
end

-- Per-policy results of the current request, reused across requests.
local r_ok, r_rem, r_reset, r_retry, r_s1, r_s2, r_s3 = {}, {}, {}, {}, {}, {}, {}
local r_alg, r_key, r_period = {}, {}, {}

-- The same few strings repeat in every request of a batch (cost 1, the
-- layer's policy parameters): convert each once.
local parsed = {}
local function arg(i)
  local s = ARGV[i]
  local v = parsed[s]
  if v == nil then
    v = tonumber(s)
    parsed[s] = v
  end
  return v
end

local out, n = {}, 0
local a, k = 2, 1
for _ = 1, tonumber(ARGV[1]) do
  local cost, npol = arg(a), arg(a + 1)
  a = a + 2
  local all = true
  for p = 1, npol do
    local alg, period = arg(a), arg(a + 3)
    local key = KEYS[k]
    local ok, rem, reset, retry, s1, s2, s3 = peek[alg](key, cost, arg(a + 1),
      arg(a + 2), period, arg(a + 4))
    r_ok[p], r_rem[p], r_reset[p], r_retry[p] = ok, rem, reset, retry
    r_s1[p], r_s2[p], r_s3[p] = s1, s2, s3
    r_alg[p], r_key[p], r_period[p] = alg, key, period
    a, k = a + 5, k + 1
    if not ok then all = false end
  end
  n = n + 1
  out[n] = all and 1 or 0
  for p = 1, npol do
    if all and cost > 0 then
      commit(r_alg[p], r_key[p], cost, r_reset[p], r_period[p], r_s1[p], r_s2[p], r_s3[p])
    end
    local rem = r_rem[p]
    if r_ok[p] and not all then rem = rem + cost end
    out[n + 1] = rem
    out[n + 2] = r_reset[p]
    if r_ok[p] then out[n + 3] = -1 else out[n + 3] = r_retry[p] end
    n = n + 3
  end
end
return out
