-- The message ids (Celery's headers.id = our job id) in one chunk of a queue list, or in kombu's
-- unacked hash (LostMessageSweeper), so only ids cross the network, never the messages.
-- KEYS[1] a queue list or the unacked hash.
-- ARGV[1] 'list' or 'hash', [2] start, [3] stop (a list's range; a hash is read whole).
-- Returns the ids found.
local items
if ARGV[1] == 'list' then
  items = redis.call('LRANGE', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
else
  items = redis.call('HVALS', KEYS[1])
end
local ids = {}
for _, el in ipairs(items) do
  for id in string.gmatch(el, '"id":%s*"([^"]+)"') do table.insert(ids, id) end
end
return ids
