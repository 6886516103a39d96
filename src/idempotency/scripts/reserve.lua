-- Reserves a batch of idempotency records, or reports each one's state:
-- ONE round trip decides, for every request in the batch, a first
-- execution, a conflict, a mismatch or a replay.
--
-- KEYS: the records (each a hash: s = state 'p'|'c', f = fingerprint,
--       t = lease token while in progress, r = stored response).
-- ARGV, per record: lease token, request fingerprint, lease (ms).
-- Returns two values per record: 0, false reserved; 1, pttl in progress;
-- 2, false fingerprint mismatch; 3, record completed; 4, false unknown state.
-- The records of a batch are decided in order: a later request for the
-- same record sees the reservation of an earlier one.
local out = {}
for i = 1, #KEYS do
  local k, a = KEYS[i], 3 * (i - 1)
  local v = redis.call('HMGET', k, 's', 'f', 'r')
  local code, extra = 4, false
  if not v[1] then
    redis.call('HSET', k, 's', 'p', 'f', ARGV[a + 2], 't', ARGV[a + 1])
    redis.call('PEXPIRE', k, ARGV[a + 3])
    code = 0
  elseif v[2] ~= ARGV[a + 2] then
    code = 2
  elseif v[1] == 'p' then
    code, extra = 1, redis.call('PTTL', k)
  elseif v[1] == 'c' and v[3] then
    code, extra = 3, v[3]
  end
  out[2 * i - 1], out[2 * i] = code, extra
end
return out
