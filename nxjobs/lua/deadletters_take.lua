-- Take a dead letter for replay (DeadLetters.take): remove the entry and move its record
-- failed -> queued with its counters reset, in one step.
-- KEYS[1] job hash, KEYS[2] index zset, KEYS[3] entries hash.
-- ARGV[1] job id, [2] now ISO, [3] record ttl s.
-- Returns {status, entry or state}:
--    1 record moved failed -> queued, counters reset, `replays` bumped; entry removed
--    2 record expired (the caller creates it again); entry removed
--    0 record is no longer failed (e.g. reconciliation completed it): stale entry removed
--   -1 no such entry
-- moves: failed -> queued
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys), and this script the items hash.
--#include lib/state.lua
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if not entry then return {-1, ''} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local moved, state = set_state(KEYS[1], 'queued', 'updated_at', ARGV[2], 'attempts', 0,
                               'throttles', 0, 'waits', 0, 'error', '')
if not state then return {2, entry} end
if not moved then return {0, state} end
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
-- A paged job's items hash lives as long as its record (a no-op for others).
redis.call('EXPIRE', KEYS[1] .. KEY.JOB_ITEMS_SUFFIX, tonumber(ARGV[3]))
return {1, entry}
