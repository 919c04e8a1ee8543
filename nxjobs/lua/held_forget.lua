-- Delete one worker's entry from the held-messages hash only if it is still the entry we read:
-- a worker that came back under the same name and listed its messages again keeps its entry.
-- KEYS[1] the hash (keys.WORKERS_HELD). ARGV[1] the worker's node name, ARGV[2] the value read.
-- Returns 1 if deleted, 0 otherwise.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
