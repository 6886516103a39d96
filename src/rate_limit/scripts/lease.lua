-- Leases, the second part of the check script (after state.lua; see
-- src/rate_limit/algorithm/lease.rs, the same arithmetic): units policy p
-- could admit now in one request,
local function available(p, x, y, z)
  local alg, cap, t = P[p], P[p + 1], P[p + 2]
  if alg == 1 then
    local tat = x
    if not tat or tat < now then tat = now end
    local v = floor((t * cap + now - tat) / t)
    if v < 0 then return 0 end
    return v
  elseif alg == 5 then
    return (tokens_at(cap, t, x, y))
  elseif alg == 4 then
    local count = window_counts(x, y, z, floor(now / t))
    if count >= cap then return 0 end
    return cap - count
  end
  return 0
end

-- what a lease that left state (x, y, z) brings back to give units back,
local function mark_of(p, x, y, z)
  local alg = P[p]
  if alg == 1 or alg == 4 then return x end
  if alg == 5 then return y + (P[p + 1] - x) * P[p + 2] end
  return 0
end

-- and the state once `unused` units of a lease with `mark` are back, with
-- its TTL (nil: nothing goes back).
local function give_back(p, x, y, z, unused, mark)
  local alg, cap, t = P[p], P[p + 1], P[p + 2]
  local ahead = mark - now
  if ahead < 0 then ahead = 0 end
  if alg == 1 and x then
    local back = unused * t
    if back > ahead then back = ahead end
    local tat = x - back
    if tat < now then tat = now end
    return tat, nil, nil, tat - now
  elseif alg == 5 and x and y then
    local tokens, last = tokens_at(cap, t, x, y)
    local back = floor(ahead / t)
    if unused < back then back = unused end
    tokens = tokens + back
    if tokens >= cap then tokens = cap; last = now end
    local reset = (cap - tokens) * t + last - now
    if reset < 0 then reset = 0 end
    return tokens, last, nil, reset
  elseif alg == 4 and x == mark then
    local count = (y or 0) - unused
    if count < 0 then count = 0 end
    local reset = (x + 1) * t - now
    if reset < 0 then reset = 0 end
    return x, count, 0, reset
  end
  return nil
end
