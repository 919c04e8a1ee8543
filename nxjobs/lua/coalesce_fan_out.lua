-- Fan a coalesced batch's answer out to its members (CoalesceQueue.fan_out), then mark the
-- batch done. A member no longer running or retrying (e.g. failed by an operator) is left as
-- it is. A member whose callback came first is completed at once.
-- KEYS[1] waiting zset (the kind's family), KEYS[2] batch hash, KEYS[3] open batches zset,
--   KEYS[4] (a number check's only) the batch's member index (lib/member_index.lua): it keeps
--   ARGV[12] too, what a completed member's repeated DR is proved against (callbacks_apply.lua),
--   and lives on with the members' records.
-- ARGV[1] job key prefix (nxjobs.keys.JOB_KEY_PREFIX), [2] now ISO, [3] now unix s,
--   [4] callbacks due-at unix s, [5] ttl s, [6] batch id, [7] request JSON (shared),
--   [8] the batch's attempts, [9] its throttles, [10] the result JSON most members share,
--   [11] JSON list of the ids of the members submitted with it (a number check's whole batch in
--   two arguments, not three per member), [12] the provider id the members' callbacks must
--   prove (the batch's requestId) or '', then per other member (3 each): id, 's' (submitted)
--   or 'f' (failed), its own result or error JSON.
-- What members share (request, result, attempts, throttles, submitted_at) is stored once, in the
--   batch hash; a member reads from there what it has none of its own of (RecordStore.get,
--   nxjobs.keys.BATCH_SHAREABLE).
-- Returns the ids of members completed at once (their callback came first).
-- moves: running -> submitted, retrying -> submitted, submitted -> completed
-- moves: running -> failed, retrying -> failed
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys), and a member index its
-- shards (lib/member_index.lua).
--#include lib/state.lua
--#include lib/prove_early.lua
--#include lib/member_index.lua
local prefix, ttl = ARGV[1], tonumber(ARGV[5])
local completed = {}
local waiting = {}
-- doc false: the member's result is the one its batch shares (ARGV[10]).
local function record(id, outcome, doc)
  local jk = prefix .. id
  local cur = redis.call('HMGET', jk, 'state', 'callbacks_done', FIELD.PROOF_SEEN)
  if cur[1] ~= 'running' and cur[1] ~= 'retrying' then return end
  if outcome ~= 'f' and ARGV[12] ~= '' and cur[3] and cur[3] ~= ARGV[12] then
    prove_early(jk, ARGV[12], cur[3])
    cur[2] = '0'
  end
  -- The member's own story: its request was tried as often as its batch was.
  local now_in = 'failed'
  if outcome == 'f' then
    set_state(jk, 'failed', 'error', doc, 'updated_at', ARGV[2],
              'attempts', ARGV[8], 'throttles', ARGV[9])
  elseif doc then
    set_state(jk, 'submitted', 'result', doc, 'error', '', 'updated_at', ARGV[2],
              'submitted_at', ARGV[3], 'attempts', ARGV[8], 'throttles', ARGV[9])
  else
    set_state(jk, 'submitted', 'result', '', 'error', '', 'updated_at', ARGV[2],
              'submitted_at', ARGV[3], 'attempts', ARGV[8], 'throttles', ARGV[9])
  end
  if outcome ~= 'f' then
    -- Its callback may have come first: then it is complete now.
    now_in = 'submitted'
    if tonumber(cur[2] or '0') >= 1 and set_state(jk, 'completed') then
      now_in = 'completed'
      table.insert(completed, id)
    else
      table.insert(waiting, ARGV[4])
      table.insert(waiting, id)
    end
    if ARGV[12] ~= '' then redis.call('HSET', jk, FIELD.PROOF_ID, ARGV[12]) end
  end
  keep_record(jk, now_in, ttl)
end
for _, id in ipairs(cjson.decode(ARGV[11])) do record(id, 's', false) end
for i = 13, #ARGV, 3 do record(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
-- One ZADD per 1 000 members rather than one per member (unpack is bounded by Lua's C stack).
for i = 1, #waiting, 2000 do
  redis.call('ZADD', KEYS[1], unpack(waiting, i, math.min(i + 1999, #waiting)))
end
-- Kept (without its members) as proof it was sent: a late duplicate of its flush stops here.
redis.call('HDEL', KEYS[2], 'members', 'items')
redis.call('HSET', KEYS[2], 'done', '1', 'request', ARGV[7], 'result', ARGV[10],
           'submitted_at', ARGV[3], 'attempts', ARGV[8], 'throttles', ARGV[9])
redis.call('EXPIRE', KEYS[2], ttl)
if KEYS[4] and ARGV[12] ~= '' then
  redis.call('HSET', KEYS[4], FIELD.PROOF_ID, ARGV[12])
  member_index_expire(KEYS[4], ttl)
end
redis.call('ZREM', KEYS[3], ARGV[6])
return completed
