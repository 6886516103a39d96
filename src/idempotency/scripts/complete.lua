-- Store the response of a reservation, only while its lease token still
-- holds it (fencing): a holder whose lease lapsed cannot overwrite.
--
-- KEYS[1]: the record. ARGV[1]: lease token; ARGV[2]: the encoded
-- response; ARGV[3]: record TTL (ms).
-- Returns 1 stored, 0 the lease was lost.

if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 't')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
