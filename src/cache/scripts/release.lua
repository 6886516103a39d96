-- Releases a fill lock if it is still ours; after a response that could not
-- be stored, also marks the slot hit-for-miss so that waiters stop queueing
-- behind the lock.
-- KEYS[1] lock, KEYS[2] hit-for-miss marker
-- ARGV[1] token, ARGV[2] marker ttl ms (0 = no marker)
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
