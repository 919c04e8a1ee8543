-- The move to `submitted` (RecordStore.transition), plus the callback bookkeeping that must
-- happen in the same step (nxjobs.callbacks): point the correlation index keys at the job, set
-- how many completion units it needs, then either complete it at once (nothing to wait for, or
-- every callback already came early) or put it on its family's waiting set, due for
-- reconciliation at the deadline.
-- KEYS[1] job hash, KEYS[2] waiting zset of the job's family, KEYS[3..] correlation index keys.
-- ARGV[1..5] as store_transition.lua; [6] job id, [7] units needed, [8] due-at (unix s),
--   [9] now (unix s), [10] the provider id callbacks must prove (FIELD.PROOF_ID) or '',
--   [11..] field/value pairs to set.
-- Returns as store_transition.lua plus the state the job is left in: `completed` tells the
--   caller the callbacks had all come before the submit result.
--#include lib/prove_early.lua
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, '', 0, 0, ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. cur .. ',', 1, true) then
  return {0, cur, 0, 0, cur}
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[3], 'submitted_at', ARGV[9],
           'callbacks_needed', ARGV[7])
for counter in string.gmatch(ARGV[5], '[^,]+') do redis.call('HINCRBY', KEYS[1], counter, 1) end
for i = 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[6], 'EX', ttl) end
if ARGV[10] ~= '' then
  prove_early(KEYS[1], ARGV[10], redis.call('HGET', KEYS[1], FIELD.PROOF_SEEN))
  redis.call('HSET', KEYS[1], FIELD.PROOF_ID, ARGV[10])
end
local done = tonumber(redis.call('HGET', KEYS[1], 'callbacks_done') or '0')
local state = ARGV[1]
if done >= tonumber(ARGV[7]) then
  state = 'completed'
  redis.call('HSET', KEYS[1], 'state', state)
else
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[6])
end
redis.call('EXPIRE', KEYS[1], ttl)
local counts = redis.call('HMGET', KEYS[1], 'attempts', 'throttles')
return {1, cur, tonumber(counts[1] or '0'), tonumber(counts[2] or '0'), state}
