-- Where a job's callback items live, the one rule every script asks: a small job keeps its
-- callback entries, completion units and proof marks (FIELD.PHONE_FIELD, FIELD.ORDER_FIELD) in
-- its own hash; one marked FIELD.CALLBACKS_PAGED (nxjobs.correlate.INLINE_CALLBACKS, set at create)
-- keeps them in its items hash (nxjobs.keys.job_items), each entry numbered in arrival order, and
-- its job hash keeps only fixed fields and the summary (FIELD.CALLBACKS_SUMMARY).
-- items_key(jk, paged): the hash that holds the job's units, proof marks and dedupe keys.
-- add_item(jk, paged, dedupe, entry, n): store `entry` as the job's n-th (n = entries stored + 1)
--   unless its dedupe key is there already; true if stored. A new items hash gets the record's TTL.
-- count_outcome(jk, outcome, max): one more callback with `outcome` in a paged job's summary, a
--   JSON object outcome -> count of at most `max` outcomes (the rest counted as 'other').
-- drop_items(jk, paged): remove every entry, dedupe key and unit (the proof marks stay) and the
--   summary; returns how many entries.
--#include lib/keys.lua
--#include lib/fields.lua
local function items_key(jk, paged)
  if paged then return jk .. KEY.JOB_ITEMS_SUFFIX end
  return jk
end
local function add_item(jk, paged, dedupe, entry, n)
  if not paged then
    return redis.call('HSETNX', jk, FIELD.CALLBACK_FIELD .. dedupe, entry) == 1
  end
  local ik = jk .. KEY.JOB_ITEMS_SUFFIX
  if redis.call('HSETNX', ik, FIELD.CALLBACK_FIELD .. dedupe, n) == 0 then return false end
  redis.call('HSET', ik, FIELD.ITEM_FIELD .. n, entry)
  -- Created by this callback (a list marks no orders at create): it lives as long as the record.
  if redis.call('PTTL', ik) == -1 then
    local ttl = redis.call('PTTL', jk)
    if ttl > 0 then redis.call('PEXPIRE', ik, ttl) end
  end
  return true
end
local function count_outcome(jk, outcome, max)
  local raw = redis.call('HGET', jk, FIELD.CALLBACKS_SUMMARY)
  local counts = raw and cjson.decode(raw) or {}
  if counts[outcome] == nil then
    local n = 0
    for _ in pairs(counts) do n = n + 1 end
    if n >= max then outcome = 'other' end
  end
  counts[outcome] = (counts[outcome] or 0) + 1
  redis.call('HSET', jk, FIELD.CALLBACKS_SUMMARY, cjson.encode(counts))
end
local function drop_items(jk, paged)
  local home = items_key(jk, paged)
  local cb, cu, e = FIELD.CALLBACK_FIELD, FIELD.UNIT_FIELD, FIELD.ITEM_FIELD
  local dropped = 0
  for _, f in ipairs(redis.call('HKEYS', home)) do
    local is_cb = string.sub(f, 1, #cb) == cb
    if is_cb or string.sub(f, 1, #cu) == cu or (paged and string.sub(f, 1, #e) == e) then
      redis.call('HDEL', home, f)
      if is_cb then dropped = dropped + 1 end
    end
  end
  if paged then redis.call('HDEL', jk, FIELD.CALLBACKS_SUMMARY) end
  return dropped
end
