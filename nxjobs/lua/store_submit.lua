-- The move to `submitted` (RecordStore.submit, .transition), plus the callback bookkeeping that
-- must happen in the same step (nxjobs.callbacks): point the correlation index keys at the job,
-- set how many completion units it needs, then either complete it at once (nothing to wait for,
-- or every callback already came early) or put it on its family's waiting set, due for
-- reconciliation at the deadline. Once moved, delete the keys the caller names (what a submitted
-- job no longer needs: its in-flight marker, its kept payload).
-- KEYS[1] job hash, KEYS[2] waiting zset of the job's family, KEYS[3..] correlation index keys,
--   then the keys to delete once moved (their count is ARGV[9]).
-- ARGV[1] now ISO, [2] ttl s, [3] counters to increment (comma list, may be empty), [4] job id,
--   [5] units needed, [6] due-at (unix s), [7] now (unix s), [8] the provider id callbacks must
--   prove (FIELD.PROOF_ID) or '', [9] how many of the last KEYS to delete once moved,
--   [10..] field/value pairs to set.
-- Returns as store_transition.lua plus the state the job is left in: `completed` tells the
--   caller the callbacks had all come before the submit result.
-- moves: running -> submitted, submitted -> completed
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
--#include lib/prove_early.lua
local moved, cur = set_state(KEYS[1], 'submitted', 'updated_at', ARGV[1], 'submitted_at', ARGV[7],
                             'callbacks_needed', ARGV[5])
if not cur then return {-1, '', 0, 0, ''} end
if not moved then return {0, cur, 0, 0, cur} end
local ttl = tonumber(ARGV[2])
for counter in string.gmatch(ARGV[3], '[^,]+') do redis.call('HINCRBY', KEYS[1], counter, 1) end
local last_index = #KEYS - tonumber(ARGV[9])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 3, last_index do redis.call('SET', KEYS[i], ARGV[4], 'EX', ttl) end
if ARGV[8] ~= '' then
  prove_early(KEYS[1], ARGV[8], redis.call('HGET', KEYS[1], FIELD.PROOF_SEEN))
  redis.call('HSET', KEYS[1], FIELD.PROOF_ID, ARGV[8])
end
local done = tonumber(redis.call('HGET', KEYS[1], 'callbacks_done') or '0')
local state = 'submitted'
if done >= tonumber(ARGV[5]) and set_state(KEYS[1], 'completed') then
  state = 'completed'
else
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[4])
end
keep_record(KEYS[1], state, ttl)
if last_index < #KEYS then redis.call('DEL', unpack(KEYS, last_index + 1)) end
local counts = redis.call('HMGET', KEYS[1], 'attempts', 'throttles')
return {1, cur, tonumber(counts[1] or '0'), tonumber(counts[2] or '0'), state}
