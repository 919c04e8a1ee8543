-- The flush half of coalescing (CoalesceQueue.take): build batch ARGV[1] from the pending list,
-- or return it if built before. Members go `running`; a number check's correlation index
-- (batchNo, phone) -> job id, one index for the batch, is set before anything is sent.
-- KEYS[1] batch hash, KEYS[2] pending list, KEYS[3] open batches zset, KEYS[4] flush-armed flag,
--   KEYS[5] groups with pending items (set): ARGV[8] leaves it when its list is empty, and is
--   added back while items remain (a set missing the group heals here), KEYS[6] (a number
--   check's only) this batch's member index (nxjobs.keys.member_index(batchNo), and its shards:
--   lib/member_index.lua): key -> job id, with the batch's TTL.
-- ARGV[1] batch id, [2] max items, [3] batchNo, [4] now unix s, [5] now ISO, [6] ttl s,
--   [7] job key prefix (nxjobs.keys.JOB_KEY_PREFIX), [8] group.
-- Returns {0 nothing taken | 1 built before | 2 built now | 3 already sent and recorded,
--          members JSON [[id, key], ...], pending left, items JSON {id: item JSON}}.
-- moves: queued -> running
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys), and a member index its
-- shards (lib/member_index.lua).
--#include lib/state.lua
--#include lib/fields.lua
--#include lib/member_index.lua
-- The pending list's length, with the groups set made to agree with it.
local function pending_left()
  local left = redis.call('LLEN', KEYS[2])
  if left == 0 then
    redis.call('SREM', KEYS[5], ARGV[8])
  else
    redis.call('SADD', KEYS[5], ARGV[8])
  end
  return left
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'done') then
    return {3, '[]', pending_left(), '{}'}
  end
  redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[1])
  return {1, redis.call('HGET', KEYS[1], 'members'), pending_left(),
          redis.call('HGET', KEYS[1], 'items') or '{}'}
end
local max, ttl, prefix = tonumber(ARGV[2]), tonumber(ARGV[6]), ARGV[7]
local entries = redis.call('LRANGE', KEYS[2], 0, max - 1)
if #entries == 0 then return {0, '[]', pending_left(), '{}'} end
redis.call('LTRIM', KEYS[2], #entries, -1)
local seen, members, items, again = {}, {}, {}, {}
local has_items = false
for _, entry in ipairs(entries) do
  local sep = string.find(entry, '|', 1, true)
  local id, key = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  local sep2 = string.find(key, '|', 1, true)
  local item = false
  if sep2 then item, key = string.sub(key, sep2 + 1), string.sub(key, 1, sep2 - 1) end
  local jk = prefix .. id
  if seen[key] then
    table.insert(again, entry)
  else
    local cur = redis.call('HMGET', jk, 'state', 'attempts')
    if cur[1] == 'queued' and set_state(jk, 'running', 'updated_at', ARGV[5],
                                        'coalesce_batch', ARGV[1],
                                        'attempts', (tonumber(cur[2]) or 0) + 1) then
      seen[key] = true
      table.insert(members, {id, key})
      if item then items[id] = item; has_items = true end
      if KEYS[6] then
        -- Its callbacks must carry the batch's batchNo (nxjobs.callbacks.ledger).
        redis.call('HSET', jk, FIELD.PROOF_BATCH, ARGV[3])
      end
    end
  end
end
for i = #again, 1, -1 do redis.call('LPUSH', KEYS[2], again[i]) end
local left = pending_left()
if #members == 0 then return {0, '[]', left, '{}'} end
local encoded = cjson.encode(members)
local encoded_items = has_items and cjson.encode(items) or '{}'
redis.call('HSET', KEYS[1], 'group', ARGV[8], 'batch_no', ARGV[3], 'members', encoded,
           'items', encoded_items, 'created_at', ARGV[4], 'created_iso', ARGV[5], 'attempts', 0,
           'throttles', 0)
redis.call('EXPIRE', KEYS[1], ttl)
if KEYS[6] then member_index_build(KEYS[6], members, ttl) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('DEL', KEYS[4])
return {2, encoded, left, encoded_items}
