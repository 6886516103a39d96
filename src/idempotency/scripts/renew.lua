-- Extend the lease of a reservation whose handler is still running, only
-- while its lease token still holds it.
--
-- KEYS[1]: the record. ARGV[1]: lease token; ARGV[2]: lease (ms).
-- Returns 1 renewed, 0 the lease was lost.

if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
