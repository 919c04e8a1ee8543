-- prove_early(jk, id, seen): the submit answer names the provider id (requestId, sessionid)
-- callbacks must prove. Callbacks that came before it were taken on the id the first of them
-- carried (FIELD.PROOF_SEEN, passed in as `seen`); if that is not the answer's id they were
-- forged: drop them all, so the job counts only its own. The caller records the id itself
-- (FIELD.PROOF_ID) in the write it makes anyway.
-- Shared by store_submit.lua and coalesce_fan_out.lua; where the callbacks are: lib/items.lua.
--#include lib/items.lua
local function prove_early(jk, id, seen)
  if not seen or seen == id then return end
  local dropped = drop_items(jk, redis.call('HGET', jk, FIELD.CALLBACKS_PAGED) == '1')
  redis.call('HDEL', jk, FIELD.PROOF_SEEN)
  redis.call('HSET', jk, 'callbacks_done', 0, 'callbacks_stored', 0)
  redis.call('HINCRBY', jk, 'callbacks_dropped', dropped)
end
