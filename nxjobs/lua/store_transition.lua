-- Move a job to the state a worker asks for (RecordStore.transition): the check "may this state
-- follow the current one?" and the write in one step; bump counters and set fields with it.
-- KEYS[1] job hash.
-- ARGV[1] new state, [2] allowed-from (comma list), [3] now ISO, [4] ttl s,
--   [5] counters to increment (comma list, may be empty), [6..] field/value pairs to set.
-- Returns {status, state before, attempts, throttles}: status 1 moved, 0 the state may not
--   follow the current one, -1 no record.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, '', 0, 0} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. cur .. ',', 1, true) then
  return {0, cur, 0, 0}
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[3])
for counter in string.gmatch(ARGV[5], '[^,]+') do redis.call('HINCRBY', KEYS[1], counter, 1) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local counts = redis.call('HMGET', KEYS[1], 'attempts', 'throttles')
return {1, cur, tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
