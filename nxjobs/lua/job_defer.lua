-- Defer a claimed job to a later time (nxjobs.schedule.Schedule.defer): a call outside its
-- calling hours, or whose retry or slot wait would end after closing time, waits in the schedule
-- for the next opening. The state, the schedule entry and the stored message in one step, and
-- only if nothing may have been sent: with the in-flight marker set the job is left as it is.
-- KEYS[1] job hash, [2] the schedule (sorted set), [3] its scheduled message, [4] its payload
--   key, [5] its in-flight marker.
-- ARGV[1] job id, [2] now ISO, [3] due (unix ms), [4] the message (JSON, as
--   nxjobs.schedule.message), [5] keep s (TTL of the record, message and payload: the wait plus
--   the record TTL), [6..] field/value pairs set with the state (run_at, schedule_note...).
-- Returns {1, state before} deferred; {0, state, why} refused, nothing changed: why is
--   'inflight' (a request may have reached the provider) or '' (not running); {-1, ''} no record.
-- moves: running -> scheduled
-- Beyond KEYS, set_state touches the job indexes, the retention hash and the payload key
-- (lib/state.lua; their names rendered from nxjobs.keys); the scheduled index is re-scored by the
-- due time, as the producer scores it.
--#include lib/state.lua
local cur = redis.call('HMGET', KEYS[1], 'state', 'kind')
local state, kind = cur[1], cur[2]
if not state then return {-1, ''} end
if state ~= 'running' then return {0, state, ''} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, state, 'inflight'} end
local fields = {'updated_at', ARGV[2]}
for i = 6, #ARGV do table.insert(fields, ARGV[i]) end
if not set_state(KEYS[1], 'scheduled', unpack(fields)) then return {0, state, ''} end
local keep, due_ms = tonumber(ARGV[5]), tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[4], keep)
redis.call('SET', KEYS[3], ARGV[4], 'EX', keep)
redis.call('ZADD', KEYS[2], due_ms, ARGV[1])
if kind then redis.call('ZADD', job_index_key(kind, 'scheduled'), math.floor(due_ms / 1000), ARGV[1]) end
return {1, state}
