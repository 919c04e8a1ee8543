-- The groups with pending items (CoalesceQueue.unarmed_groups, the sweep): the members of the
-- groups set whose pending list is not empty; a member whose list is empty is dropped in the same
-- step, so an enqueue (which adds its group back) can never be lost between the look and the drop.
-- KEYS[1] the groups set (nxjobs.keys.COALESCE_GROUPS).
-- ARGV[1] what a pending list's key starts with and [2] what it ends with around its group
--   (nxjobs.keys.coalesce_pending), so the lists are named without a scan.
-- Returns the groups with items.
local out = {}
for _, group in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('LLEN', ARGV[1] .. group .. ARGV[2]) > 0 then
    table.insert(out, group)
  else
    redis.call('SREM', KEYS[1], group)
  end
end
return out
