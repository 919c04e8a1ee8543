-- Take up to ARGV[3] due scheduled jobs for publishing (nxjobs.schedule.Schedule.take): each is
-- re-scored to the end of the lease, not removed, so a worker that dies before confirming
-- (schedule_confirm.lua) leaves it to be offered again once the lease ends.
-- KEYS[1] the schedule (sorted set, score = due unix ms).
-- ARGV[1] now (unix ms), [2] lease end (unix ms), [3] most jobs taken, [4] the job key prefix
--   (nxjobs.keys.JOB_KEY_PREFIX), [5] the scheduled-message suffix
--   (nxjobs.keys.SCHEDULED_MESSAGE_SUFFIX).
-- Returns {id, message JSON, id, message JSON, ...}; an id whose message is gone (its record
-- expired) leaves the schedule and is not returned.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local message = redis.call('GET', ARGV[4] .. id .. ARGV[5])
  if message then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
    table.insert(out, id)
    table.insert(out, message)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
