-- Confirm scheduled jobs whose messages were published (nxjobs.schedule.Schedule.confirm): each
-- leaves the schedule, goes `scheduled` -> `queued` (unless its message was claimed first, or it
-- was cancelled: then its state is left as it is) and its scheduled message is deleted.
-- KEYS[1] the schedule (sorted set).
-- ARGV[1] now ISO, [2] record ttl s, [3] the job key prefix (nxjobs.keys.JOB_KEY_PREFIX),
--   [4] the scheduled-message suffix (nxjobs.keys.SCHEDULED_MESSAGE_SUFFIX), [5] the lease end
--   (unix ms) the take gave these entries, or '' (any), [6..] job ids.
-- An entry whose score is no longer that lease end was put in the schedule again meanwhile (its
-- message was claimed and deferred, job_defer.lua): it is left alone.
-- Returns how many jobs went queued.
-- moves: scheduled -> queued
-- Beyond KEYS, set_state touches the job indexes, the retention hash and the payload key
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
local ttl, queued = tonumber(ARGV[2]), 0
local lease = tonumber(ARGV[5])
for i = 6, #ARGV do
  local id = ARGV[i]
  local jk = ARGV[3] .. id
  local score = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if not (lease and score and score ~= lease) then
    redis.call('ZREM', KEYS[1], id)
    if set_state(jk, 'queued', 'updated_at', ARGV[1]) then
      keep_record(jk, 'queued', ttl)
      queued = queued + 1
    end
    redis.call('DEL', jk .. ARGV[4])
  end
end
return queued
