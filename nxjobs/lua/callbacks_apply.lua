-- Apply one callback to its job (Ledger.apply; callbacks_apply_batch.lua runs it per entry):
-- find the job (correlation index keys, then a direct id), prove the callback is the job's own,
-- drop a repeat, store the entry where the job keeps its callbacks (lib/items.lua: its own hash,
-- or the items hash of a paged job, whose summary it counts too), count completion units and,
-- when the last one arrived and the job is submitted, complete it and take it off the waiting set.
-- Whatever proves nothing goes to the bounded unmatched store with its reason. A callbot list's
-- callbacks name one of its tasks (FIELD.PROOF_TASKS: a list split by time zone has several).
-- KEYS[1] unmatched zset, KEYS[2] unmatched entries hash, KEYS[3] waiting zset of the job kind's
--   family, KEYS[4] the ambiguous-call reconcile zset, KEYS[5] this callback's replay key,
--   KEYS[6..] correlation index keys.
-- ARGV[1] job key prefix (nxjobs.keys.JOB_KEY_PREFIX), [2] direct job id or '', [3] job kind
--   expected, [4] dedupe key, [5] completion unit or '' (equal to [4]: each distinct callback is
--   one), [6] entry JSON (an object), [7] the correlating ids (JSON), [8] now ISO,
--   [9] unmatched max count, [10] result JSON for a call job failed as ambiguous that this
--   proves, or '', [11] a second job kind it may belong to (found by an index key) or '',
--   [12] its completion unit there or '', [13] source ('callback' is proved against the job; any
--   other is the provider's own query answer), [14] check (events.CHECK_*) or '',
--   [15..17] its proof ids, [18] replay key expiry (unix s) or '' (unsigned),
--   [19] unmatched max bytes, [20] unmatched body bytes kept, [21] now (unix ms),
--   [22] callback type, [23] its outcome (nxjobs.correlate.callback_outcome), [24] outcomes a
--   paged job's summary counts apart at most, [25] the phone a coalesced member is found by in
--   KEYS[6], its batch's member index (lib/member_index.lua), or '' (KEYS[6] is then a plain
--   index key), [26] the entry as a completed member keeps it (nxjobs.store.member_entry) or '',
--   [27] its field's suffix (after FIELD.MEMBER_CALLBACK_FIELD).
-- Returns {status, job id, state[, submitted_at, job kind]}: 1 recorded, 2 duplicate or replay
--   (nothing written), 0 unmatched, 3 dropped (the job has all the callbacks it can have:
--   counted), 4 deferred (a failed call is looked up at the provider instead); submitted_at
--   (unix s) only from the callback that completed the job, once per job.
-- moves: submitted -> completed, failed -> completed
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys), a paged job's items hash
-- (lib/items.lua) and the shards of a member index (lib/member_index.lua).
--#include lib/state.lua
--#include lib/fields.lua
--#include lib/items.lua
--#include lib/member_index.lua
local replay = ARGV[18] ~= ''
if replay and redis.call('EXISTS', KEYS[5]) == 1 then return {2, '', ''} end
local function seen(reply)
  if replay then redis.call('SET', KEYS[5], '1', 'EXAT', ARGV[18]) end
  return reply
end
local function unmatched(reason)
  local fp, eh = ARGV[4], KEYS[2]
  redis.call('ZADD', KEYS[1], ARGV[21], fp)
  if redis.call('HINCRBY', eh, 'n:' .. fp, 1) > 1 then return seen({0, '', ''}) end
  local body, n = ARGV[6], tonumber(ARGV[20])
  local cut = #body > n
  if cut then
    -- Never cut inside a UTF-8 sequence: back off continuation bytes.
    while n > 0 and string.byte(body, n + 1) >= 128 and string.byte(body, n + 1) < 192 do
      n = n - 1
    end
    body = string.sub(body, 1, n)
  end
  local entry = '{"ids":' .. ARGV[7] .. ',"reason":' .. cjson.encode(reason) .. ',"type":"' ..
    ARGV[22] .. '","source":"' .. ARGV[13] .. '","received_at":"' .. ARGV[8] .. '","truncated":' ..
    tostring(cut) .. ',"callback":' .. cjson.encode(body) .. '}'
  redis.call('HSET', eh, 'e:' .. fp, entry)
  local total = redis.call('HINCRBY', eh, 'bytes', #entry)
  local max_n, max_b = tonumber(ARGV[9]), tonumber(ARGV[19])
  while total > max_b or redis.call('ZCARD', KEYS[1]) > max_n do
    local oldest = redis.call('ZPOPMIN', KEYS[1])
    if #oldest == 0 then break end
    local len = redis.call('HSTRLEN', eh, 'e:' .. oldest[1])
    redis.call('HDEL', eh, 'e:' .. oldest[1], 'n:' .. oldest[1])
    total = redis.call('HINCRBY', eh, 'bytes', -len)
  end
  return seen({0, '', ''})
end
local job_id, found_by = false, false
for i = 6, #KEYS do
  if i == 6 and ARGV[25] ~= '' then
    job_id = member_index_find(KEYS[6], ARGV[25])
  else
    job_id = redis.call('GET', KEYS[i])
  end
  if job_id then found_by = KEYS[i]; break end
end
if not job_id and ARGV[2] ~= '' then job_id = ARGV[2] end
local jk = job_id and (ARGV[1] .. job_id)
local kind, state, done, need, stored, cap, paged = false, false, 0, -1, 0, false, false
local member = false
-- What the proof needs comes in the same read (FIELD.PROOF_*).
local proof = {}
if jk then
  local h = redis.call('HMGET', jk, 'kind', 'state', 'callbacks_done', 'callbacks_needed',
                       'callbacks_stored', 'callbacks_max', FIELD.PROOF_ID, FIELD.PROOF_SEEN,
                       FIELD.PROOF_BATCH, FIELD.PROOF_TASK, FIELD.PROOF_ORDERS,
                       FIELD.CALLBACKS_PAGED, 'coalesce_batch', FIELD.PROOF_TASKS)
  kind, state, done, need = h[1], h[2], tonumber(h[3] or '0'), tonumber(h[4] or '-1')
  stored, cap = tonumber(h[5] or '0'), tonumber(h[6] or '')
  proof = {id = h[7], seen = h[8], batch = h[9], task = h[10], orders = tonumber(h[11] or '0'),
           tasks = tonumber(h[14] or '1')}
  paged = h[12] == '1'
  member = h[13]
end
-- A callbot list's own task: the job id, or (split by time zone) `<job id>-z<n>` below its count.
local function list_task(uid)
  if proof.tasks <= 1 then return uid == job_id end
  local head = job_id .. '-z'
  local n = string.sub(uid, 1, #head) == head and string.match(string.sub(uid, #head + 1), '^%d+$')
  return n and tonumber(n) < proof.tasks or false
end
-- Where this job's units, proof marks and dedupe keys are.
local home = jk and items_key(jk, paged)
local unit = ARGV[5]
local alt = kind and ARGV[11] ~= '' and kind == ARGV[11]
if alt then
  unit = ARGV[12]
elseif kind ~= ARGV[3] then
  return unmatched(kind and 'job of another kind' or 'no job')
end
-- Finding the job is not enough: its ids must be the ones the job recorded (FIELD.PROOF_*).
local check, trusted = ARGV[14], ARGV[13] ~= 'callback'
local function provisional(id)
  if proof.id then return proof.id == id end
  if proof.seen then return proof.seen == id end
  -- The submit answer (and its id) is not recorded yet: the first callback fixes the id the rest
  -- must carry, and the submit step drops them all if the answer names another
  -- (lib/prove_early.lua).
  if state == 'queued' or state == 'running' or state == 'retrying' then
    redis.call('HSET', jk, FIELD.PROOF_SEEN, id)
  end
  return true
end
if check == 'nc' and not trusted then
  if member and state == 'completed' and not proof.batch then
    -- A completed coalesced member keeps no proof fields (dropped at completion, below): found
    -- in its batch's member index (batchNo and phone), with the batch's requestId (kept there by
    -- the fan-out), its own callback again is a repeat; anything else proves nothing.
    if found_by and ARGV[25] ~= '' and ARGV[15] ~= '' and
       redis.call('HGET', found_by, FIELD.PROOF_ID) == ARGV[15] and
       (redis.call('HEXISTS', home, FIELD.CALLBACK_FIELD .. ARGV[4]) == 1 or
        (ARGV[27] ~= '' and
         redis.call('HEXISTS', home, FIELD.MEMBER_CALLBACK_FIELD .. ARGV[27]) == 1)) then
      return seen({2, job_id, state})
    end
    return unmatched('batchNo disagrees')
  end
  if ARGV[16] == '' or proof.batch ~= ARGV[16] then
    return unmatched('batchNo disagrees')
  end
  if ARGV[17] == '' or redis.call('HEXISTS', home, FIELD.PHONE_FIELD .. ARGV[17]) == 0 then
    return unmatched('phone not in the job')
  end
  if not provisional(ARGV[15]) then return unmatched('requestId disagrees') end
elseif check == 'cdr' and not trusted then
  if state == 'failed' then
    local err = redis.call('HGET', jk, 'error') or ''
    if string.find(err, '"code":"ambiguous"', 1, true) or
       string.find(err, '"code":"call_not_found"', 1, true) then
      -- A call whose placing is in doubt is settled by the provider's lookup (now), never by
      -- a callback.
      redis.call('ZADD', KEYS[4], 0, job_id)
      return seen({4, job_id, state})
    end
  end
  if ARGV[15] == '' or not provisional(ARGV[15]) then return unmatched('sessionid disagrees') end
elseif check == 'order' and not trusted then
  if alt then
    if proof.task ~= ARGV[15] then
      return unmatched('userTaskID disagrees')
    end
  else
    if not list_task(ARGV[15]) then return unmatched('userTaskID not a task of the job') end
    local oid, head = ARGV[16], job_id .. '-'
    local index = string.sub(oid, 1, #head) == head and
                  string.match(string.sub(oid, #head + 1), '^%d+$')
    if not ((index and tonumber(index) < proof.orders) or
            redis.call('HEXISTS', home, FIELD.ORDER_FIELD .. oid) == 1) then
      return unmatched('orderID not in the task')
    end
  end
elseif check == 'task' and not trusted then
  if not list_task(ARGV[15]) then return unmatched('userTaskID not a task of the job') end
end
-- A completed member's DR is kept compact, under its suffix, not its dedupe key: the provider's
-- query row for it (trusted, so not proved above) is a repeat too.
if member and state == 'completed' and ARGV[27] ~= '' and
   redis.call('HEXISTS', home, FIELD.MEMBER_CALLBACK_FIELD .. ARGV[27]) == 1 then
  return seen({2, job_id, state})
end
-- Stored by its dedupe key (lib/items.lua): a repeat writes nothing. A job holds at most
-- `callbacks_max` entries (a Number Check: one per number); distinct ones past it are counted.
if cap and stored >= cap then
  if redis.call('HEXISTS', home, FIELD.CALLBACK_FIELD .. ARGV[4]) == 1 then
    return seen({2, job_id, state})
  end
  redis.call('HINCRBY', jk, 'callbacks_dropped', 1)
  return seen({3, job_id, state})
end
if not add_item(jk, paged, ARGV[4], ARGV[6], stored + 1) then
  return seen({2, job_id, state})
end
stored = stored + 1
-- A small job's summary is read from its few entries; a paged one's is counted here.
if paged then count_outcome(jk, ARGV[23], tonumber(ARGV[24])) end
if unit == ARGV[4] then
  -- Each distinct callback is a unit (a Number Check DR): the line above has just counted it.
  done = done + 1
elseif unit ~= '' then
  done = done + redis.call('HSETNX', home, FIELD.UNIT_FIELD .. unit, '1')
end
local completes = false
if need >= 0 and done >= need then
  if state == 'submitted' then
    completes = true
  elseif state == 'failed' and ARGV[10] ~= '' and trusted then
    local err = redis.call('HGET', jk, 'error') or ''
    if string.find(err, '"code":"ambiguous"', 1, true) or
       string.find(err, '"code":"call_not_found"', 1, true) then
      -- The makecall whose answer was lost did reach the provider: its CDR lookup proves it.
      completes = true
      redis.call('HSET', jk, 'error', '', 'result', ARGV[10])
      redis.call('ZREM', KEYS[4], job_id)
    end
  end
end
if not (completes and set_state(jk, 'completed', 'callbacks_done', done, 'callbacks_stored', stored,
                               'updated_at', ARGV[8])) then
  redis.call('HSET', jk, 'callbacks_done', done, 'callbacks_stored', stored, 'updated_at', ARGV[8])
  return seen({1, job_id, state, '', kind})
end
redis.call('ZREM', KEYS[3], job_id)
-- A completed job's empty error is no field at all (the record reads it as none).
if redis.call('HGET', jk, 'error') == '' then redis.call('HDEL', jk, 'error') end
-- Completed by this callback: hand back when it was submitted, once per job, so the caller
-- can time it (nxjobs.metrics) without another round trip.
local submitted_at = ''
if redis.call('HSETNX', jk, FIELD.COMPLETION_MARKER, '1') == 1 then
  submitted_at = redis.call('HGET', jk, 'submitted_at') or ''
end
if member then
  -- A completed coalesced member keeps only what is its own (nxjobs.keys.COMPLETED_MEMBER_DROPS:
  -- its batch holds the rest), its DR entry too (nxjobs.keys.MEMBER_CALLBACK_FIELD) when the DR
  -- carries the batch's ids, and no empty result (its batch's is read).
  if ARGV[26] ~= '' and ARGV[27] ~= '' and proof.id == ARGV[15] and proof.batch == ARGV[16] then
    redis.call('HDEL', jk, FIELD.CALLBACK_FIELD .. ARGV[4])
    redis.call('HSET', jk, FIELD.MEMBER_CALLBACK_FIELD .. ARGV[27], ARGV[26])
  end
  if redis.call('HGET', jk, 'result') == '' then redis.call('HDEL', jk, 'result') end
  redis.call('HDEL', jk, FIELD.PHONE_FIELD .. ARGV[17], unpack(COMPLETED_MEMBER_DROPS))
end
return seen({1, job_id, 'completed', submitted_at, kind})
