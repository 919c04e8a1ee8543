-- Reconciliation found no trace of an ambiguous makecall (Reconciler): if the job is still
-- failed as `ambiguous`, mark it `call_not_found`; either way drop it from the reconcile set.
-- KEYS[1] job hash, KEYS[2] the ambiguous-call reconcile zset.
-- ARGV[1] job id, [2] the new error JSON, [3] now ISO.
-- Returns 1 if the error was changed, 0 if the job had moved on.
local err = redis.call('HGET', KEYS[1], 'error') or ''
local ambiguous = string.find(err, '"code":"ambiguous"', 1, true)
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' or not ambiguous then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'error', ARGV[2], 'updated_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
