-- Stores the responses of a batch of reservations, each only while its
-- lease token still holds the record (fencing): a holder whose lease
-- lapsed cannot overwrite.
--
-- KEYS: the records. ARGV, per record: lease token, the encoded response,
-- record TTL (ms).
-- Returns per record 1 stored, 0 the lease was lost.
local out = {}
for i = 1, #KEYS do
  local k, a = KEYS[i], 3 * (i - 1)
  if redis.call('HGET', k, 't') ~= ARGV[a + 1] then
    out[i] = 0
  else
    redis.call('HSET', k, 's', 'c', 'r', ARGV[a + 2])
    redis.call('HDEL', k, 't')
    redis.call('PEXPIRE', k, ARGV[a + 3])
    out[i] = 1
  end
end
return out
