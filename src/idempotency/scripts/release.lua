-- Release a reservation so that a retry runs again, only while its lease
-- token still holds it (a completed record has no token and stays).
--
-- KEYS[1]: the record. ARGV[1]: lease token.
-- Returns 1 released, 0 not held.

if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
