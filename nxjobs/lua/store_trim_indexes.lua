-- Trim the job indexes (RecordStore.trim_indexes): drop the members that entered their state
-- before its cutoff (their record has expired), oldest first, at most ARGV[1] in all per call.
-- KEYS: the index sorted sets (nxjobs.keys.job_index) to trim.
-- ARGV[1] the most members to drop in this call, then one cutoff (unix s) per key, in KEYS order:
--   members scored below it go.
-- Returns how many members were dropped.
local budget = tonumber(ARGV[1])
local dropped = 0
for i = 1, #KEYS do
  if budget <= 0 then break end
  -- The members below the cutoff are the lowest ranks: count them, drop that many by rank.
  local n = math.min(budget, redis.call('ZCOUNT', KEYS[i], '-inf', '(' .. ARGV[i + 1]))
  if n > 0 then
    dropped = dropped + redis.call('ZREMRANGEBYRANK', KEYS[i], 0, n - 1)
    budget = budget - n
  end
end
return dropped
