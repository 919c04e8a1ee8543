-- Move a job to the state a worker asks for (RecordStore.transition): the check "may this state
-- follow the current one?" and the write in one step; bump counters and set fields with it.
-- KEYS[1] job hash.
-- ARGV[1] new state, [2] now ISO, [3] ttl s, [4] counters to increment (comma list, may be
--   empty), [5..] field/value pairs to set.
-- Returns {status, state before, attempts, throttles}: status 1 moved, 0 the state may not
--   follow the current one, -1 no record.
-- The target is the caller's (ARGV[1]); the moves it may make:
-- moves: queued -> running, running -> running, retrying -> running, scheduled -> running
-- moves: running -> retrying
-- moves: submitted -> completed
-- moves: queued -> failed, running -> failed, retrying -> failed, submitted -> failed
-- Beyond KEYS, set_state touches the job indexes, the retention hash and the payload key
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
local moved, cur = set_state(KEYS[1], ARGV[1], 'updated_at', ARGV[2])
if not cur then return {-1, '', 0, 0} end
if not moved then return {0, cur, 0, 0} end
for counter in string.gmatch(ARGV[4], '[^,]+') do redis.call('HINCRBY', KEYS[1], counter, 1) end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
keep_record(KEYS[1], ARGV[1], tonumber(ARGV[3]))
local counts = redis.call('HMGET', KEYS[1], 'attempts', 'throttles')
return {1, cur, tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
