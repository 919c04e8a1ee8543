-- The sweep's half of the groups set (CoalesceQueue.unarmed_groups): drop a group whose pending
-- list is empty, checked in the same step as the removal so a push in between keeps it.
-- KEYS[1] groups with pending items (set), KEYS[2] the group's pending list.
-- ARGV[1] group.
-- Returns 1 if the group was dropped, 0 if its list has items (or it was not in the set).
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
return redis.call('SREM', KEYS[1], ARGV[1])
