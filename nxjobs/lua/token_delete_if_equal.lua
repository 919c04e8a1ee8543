-- Delete a key only if it still holds our value (AgentTokenCache: release our lock, drop a
-- token no other worker has replaced; nxjobs.held: release the orphan-restore lock).
-- KEYS[1] the key. ARGV[1] the value we set.
-- Returns 1 if deleted, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
