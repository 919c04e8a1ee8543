-- The producer half of coalescing (CoalesceQueue.enqueue): store each job's queued record and
-- append `<job id>|<key>[|<item>]` to its group's pending list; say when a flush is due.
-- KEYS[1] pending list, KEYS[2] flush-armed flag, KEYS[3] groups with pending items (set), then
--   per job: its hash, and its correlation index key when ARGV[7] is 2.
-- ARGV[1] record ttl s, [2] max items per batch, [3] armed ttl ms, [4] now ISO, [5] group,
--   [6] job kind, [7] keys per job (1, or 2 with its index key), [8] callback entries a member
--   may store, then per job (6 each): id, key (phone, orderID), item JSON or '', redacted input
--   JSON, and the record field and value its callbacks' ids are proved against
--   (nxjobs.correlate.member_proof).
-- Returns {flushes due now (a push filled a batch), 1 if a lingering flush must be sent}.
-- Job ids are fresh: one that already has a record is left alone, and not queued.
-- moves: new -> queued
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
local ttl, max, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[7])
local full = 0
local len = 0
local k = 4
for i = 9, #ARGV, 6 do
  local id, key, item = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jk = KEYS[k]
  if set_state(jk, 'queued', 'id', id, 'kind', ARGV[6], 'attempts', 0,
               'created_at', ARGV[4], 'updated_at', ARGV[4], 'input', ARGV[i + 3], 'request', '[]',
               'result', '', 'error', '', 'callbacks_needed', 1, 'coalesce_group', ARGV[5],
               'callbacks_max', ARGV[8], ARGV[i + 4], ARGV[i + 5]) then
    redis.call('EXPIRE', jk, ttl)
    if per == 2 then redis.call('SET', KEYS[k + 1], id, 'EX', ttl) end
    local entry = id .. '|' .. key
    if item ~= '' then entry = entry .. '|' .. item end
    len = redis.call('RPUSH', KEYS[1], entry)
    if len % max == 0 then full = full + 1 end
  end
  k = k + per
end
-- The sweep finds a group with items through this set, never by scanning keys.
if len > 0 then redis.call('SADD', KEYS[3], ARGV[5]) end
local linger = 0
if len % max ~= 0 and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then linger = 1 end
return {full, linger}
