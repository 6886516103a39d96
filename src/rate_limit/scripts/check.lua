-- Rate-limit decisions for a batch of requests, in one call.
-- The Redis home of src/rate_limit/algorithm.rs: same integer arithmetic.
--
-- ARGV[1], numbers packed as little-endian doubles: aliases: their count,
-- then pairs (index in KEYS, index of the first key of the same name). Then
-- policy sets: their count; per set: its policy count, per policy:
-- algorithm code and two parameters (GCRA and token bucket: capacity and
-- interval in µs; the others: limit and period in µs); then its number of
-- groups. Then the groups (one client under one set), set by set: the
-- number of requests, then each request: its cost (a check); -1, its cost
-- and the units wanted (a lease); or -2, the unused units and one mark per
-- policy (a lease given back).
-- KEYS: per group, one key per policy of its set.
-- Returns per group, per request in order: for a check, per policy:
-- remaining, reset (µs), retry after (µs, -1 when this policy allows), the
-- request allowed when every policy allows; for a lease, the units granted
-- (0: denied), then per policy the same three and the lease's mark; for a
-- refund, 1. The numbers are packed as
-- little-endian doubles (exact below 2^53) in one string: Redis converts a
-- string reply far faster than an array of integers, and so does a client.
--
-- A request is all-or-nothing: it changes state only when every policy
-- allows. Each key's state is read once, the requests of the batch are
-- decided in order against it, and it is written once at the end.
--
-- Every table and closure costs Redis an allocation per call: the script
-- keeps few of both (per-key state in one strided table).
--
-- The script is state.lua, lease.lua and this file, in that order.

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

-- Keys named twice (in KEYS order) and the first of their name.
local alias = {}
local a = 2
for _ = 1, A[1] do
  alias[A[a]] = A[a + 1]
  a = a + 2
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


local out, n = {}, 0
-- Per-policy results of the current request: 7 slots per policy in Q.
local Q = {}

-- Decides `cost` for a group's keys (k + 1 .. k + npol, parameters from
-- `first`), keeps the state when admitted, and answers per policy:
-- remaining, reset, retry (and a lease's mark when `marks`).
local function admit(k, first, npol, cost, marks)
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
    if marks then
      n = n + 1
      if all then out[n] = mark_of(first + 3 * (j - 1), Q[q + 4], Q[q + 5], Q[q + 6]) else out[n] = 0 end
    end
  end
  return all
end

-- Any group: its keys (k + 1 .. k + npol) read once into S, its requests
-- decided in order.
local function group(k, first, npol, items)
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
    local op = A[a]
    if op >= 0 then -- a check: its cost
      admit(k, first, npol, op, false)
      a = a + 1
    elseif op == -1 then -- a lease: cost (at least), units wanted
      local cost, grant = A[a + 1], A[a + 2]
      a = a + 3
      for j = 1, npol do
        local kk = k + j
        local b = 8 * (alias[kk] or kk)
        local v = available(first + 3 * (j - 1), S[b + 2], S[b + 3], S[b + 4])
        if v < grant then grant = v end
      end
      if grant < cost then grant = cost end
      n = n + 1
      local at = n
      if admit(k, first, npol, grant, true) then out[at] = grant else out[at] = 0 end
    else -- a refund: unused units, then one mark per policy
      local unused = A[a + 1]
      for j = 1, npol do
        local kk = k + j
        local b = 8 * (alias[kk] or kk)
        local x, y, z, ttl = give_back(first + 3 * (j - 1), S[b + 2], S[b + 3], S[b + 4],
          unused, A[a + 1 + j])
        if ttl then
          S[b + 2], S[b + 3], S[b + 4], S[b + 5], S[b + 6] = x, y, z, ttl, true
        end
      end
      a = a + 2 + npol
      n = n + 1
      out[n] = 1
    end
  end
end

-- Decimal text of numbers written this call: the clients of a batch that
-- were idle for an interval or more all move to the same state
-- (now + cost × interval, expiring together), so most writes share their
-- text and each text costs one string.format (a sprintf) per call.
local text = {}
local function dec(x)
  local t = text[x]
  if not t then
    t = fmt('%d', x)
    text[x] = t
  end
  return t
end

-- The common case, one GCRA policy per set: its keys read already (MGET),
-- each group's state kept in locals and written once here.
local function gcra_group(k, first, items)
  local tat, changed = tonumber(gcra[k]), false
  for _ = 1, items do
    local op, cost = A[a], A[a]
    if op == -2 then
      local x = give_back(first, tat, nil, nil, A[a + 1], A[a + 2])
      if x then tat, changed = x, true end
      a, n = a + 3, n + 1
      out[n] = 1
    else
      if op == -1 then
        cost = A[a + 1]
        local grant = available(first, tat)
        if A[a + 2] < grant then grant = A[a + 2] end
        if grant > cost then cost = grant end
        a = a + 2
      end
      a = a + 1
      local ok, rem, reset, retry, x = decide(k, first, tat, nil, nil, cost)
      if op == -1 then
        n = n + 1
        out[n] = ok and cost or 0
      end
      if ok then
        retry = -1
        if cost > 0 then tat, changed = x, true end
      end
      out[n + 1], out[n + 2], out[n + 3] = rem, reset, retry
      n = n + 3
      if op == -1 then
        n = n + 1
        out[n] = ok and x or 0
      end
    end
  end
  if changed then
    redis.call('PSETEX', KEYS[k], dec(floor((tat - now) / 1000) + 1), dec(tat))
  end
end

local k = 0
local fast = gcra and next(alias) == nil
for s = 1, sets do
  local first, npol = R[3 * s - 2], R[3 * s - 1]
  for _ = 1, R[3 * s] do
    local items = A[a]
    a = a + 1
    if fast and npol == 1 then
      gcra_group(k + 1, first, items)
    else
      group(k, first, npol, items)
    end
    k = k + npol
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
