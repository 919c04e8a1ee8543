-- Take a lock, or keep it: set it if free, renew it if it holds our token (the beat lock,
-- nxjobs.beat_lock). A lock another holder renews stays theirs.
-- KEYS[1] the lock key. ARGV[1] our token, ARGV[2] its TTL in milliseconds.
-- Returns 1 if we hold it now, 0 otherwise.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
