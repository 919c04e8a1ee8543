-- A coalesced batch's member index (nxjobs.keys.member_index): phone -> member job id, in the
-- index hash itself, or, for a batch of more than MEMBER_INDEX_SHARD_SIZE members, in
-- FIELD.MEMBER_INDEX_SHARDS shards (index key .. KEY.MEMBER_INDEX_SHARD_SEP .. n) picked by phone
-- (its last six digits modulo the shards). Beyond the index key, a script using it touches its
-- shards, named from it.
-- member_index_build(index, members, ttl): write the index of `members` ({{id, phone}, ...}),
--   every key of it expiring in `ttl` s.
-- member_index_find(index, phone): the job id `phone` has in the index, or false.
-- member_index_expire(index, ttl): the index and its shards expire in `ttl` s.
--#include lib/keys.lua
--#include lib/fields.lua
local function member_shard_key(index, phone, shards)
  if shards <= 1 then return index end
  return index .. KEY.MEMBER_INDEX_SHARD_SEP .. ((tonumber(string.sub(phone, -6)) or 0) % shards)
end
local function member_index_shards(index)
  return tonumber(redis.call('HGET', index, FIELD.MEMBER_INDEX_SHARDS) or '1')
end
local function expire_all(index, shards, ttl)
  redis.call('EXPIRE', index, ttl)
  if shards <= 1 then return end
  for n = 0, shards - 1 do redis.call('EXPIRE', index .. KEY.MEMBER_INDEX_SHARD_SEP .. n, ttl) end
end
local function member_index_build(index, members, ttl)
  local shards = math.ceil(#members / MEMBER_INDEX_SHARD_SIZE)
  if shards > 1 then redis.call('HSET', index, FIELD.MEMBER_INDEX_SHARDS, shards) end
  for _, m in ipairs(members) do
    redis.call('HSET', member_shard_key(index, m[2], shards), m[2], m[1])
  end
  expire_all(index, shards, ttl)
end
local function member_index_find(index, phone)
  return redis.call('HGET', member_shard_key(index, phone, member_index_shards(index)), phone)
end
local function member_index_expire(index, ttl)
  expire_all(index, member_index_shards(index), ttl)
end
