-- Reserve an idempotency record, or report its state: ONE round trip
-- decides a first execution, a conflict, a mismatch or a replay.
--
-- KEYS[1]: the record (a hash: s = state 'p'|'c', f = fingerprint,
--          t = lease token while in progress, r = stored response).
-- ARGV[1]: lease token; ARGV[2]: request fingerprint; ARGV[3]: lease (ms).
-- Returns {0} reserved, {1, pttl} in progress, {2} fingerprint mismatch,
-- {3, record} completed, {4} unknown state.

local v = redis.call('HMGET', KEYS[1], 's', 'f', 'r')
if not v[1] then
  redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[2], 't', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0}
end
if v[2] ~= ARGV[2] then
  return {2}
end
if v[1] == 'p' then
  return {1, redis.call('PTTL', KEYS[1])}
end
if v[1] == 'c' and v[3] then
  return {3, v[3]}
end
return {4}
