-- Bump one counter of an existing record (RecordStore.incr); never create a partial record.
-- KEYS[1] job hash. ARGV[1] counter field.
-- Returns the new count, or 0 if there is no record.
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
