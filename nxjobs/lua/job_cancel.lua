-- Cancel one job that has not been sent (nxjobs.cancel): the decision and the move in one step,
-- so a worker's claim (store_transition.lua, coalesce_take.lua) and a cancel never both win.
-- KEYS[1] job hash, [2] the schedule (sorted set), [3] its scheduled message, [4] its payload
--   key, [5] its in-flight marker.
-- ARGV[1] job id, [2] now ISO, [3] record ttl s.
-- Returns {1, state before} cancelled; {0, state, why} refused, nothing changed: why is
--   'inflight' (a request may have reached the provider), 'batch' (a coalesced member retrying
--   with its built batch) or '' (its state cannot be cancelled); {-1, ''} no record.
-- moves: scheduled -> cancelled, queued -> cancelled, retrying -> cancelled
-- Beyond KEYS, set_state touches the job indexes, the retention hash and the payload key
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
local cur = redis.call('HMGET', KEYS[1], 'state', 'coalesce_batch')
local state, batch = cur[1], cur[2]
if not state then return {-1, ''} end
if state ~= 'scheduled' and state ~= 'queued' and state ~= 'retrying' then
  return {0, state, ''}
end
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, state, 'inflight'} end
-- A member retrying with its built batch (a queued one with a batch field is a replayed single job).
if state == 'retrying' and batch and batch ~= '' then return {0, state, 'batch'} end
if not set_state(KEYS[1], 'cancelled', 'updated_at', ARGV[2], 'cancelled_from', state) then
  return {0, state, ''}
end
keep_record(KEYS[1], 'cancelled', tonumber(ARGV[3]))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return {1, state}
