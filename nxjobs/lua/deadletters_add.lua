-- Keep a dead letter (DeadLetters.add) and trim the store by age and count in the same step.
-- KEYS[1] index zset (score = unix time failed), KEYS[2] entries hash.
-- ARGV[1] job id, [2] score, [3] entry JSON, [4] max entries, [5] oldest score to keep.
-- Returns how many entries the bounds dropped.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local dropped = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local extra = redis.call('ZCARD', KEYS[1]) - #dropped - tonumber(ARGV[4])
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #dropped, #dropped + extra - 1)) do
    table.insert(dropped, id)
  end
end
for _, id in ipairs(dropped) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #dropped
