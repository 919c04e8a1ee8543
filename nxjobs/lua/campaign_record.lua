-- Record one campaign-control operation of a callbot list (nxjobs.campaign) in its record's
-- campaign field (FIELD.CAMPAIGN_FIELD, JSON): the operation and what the provider answered,
-- appended to `operations` (the newest ARGV[9] kept), the status the answer gives, its time
-- (paused_at, resumed_at, completed_at) and the orders stopped. The same operation id twice (a
-- redelivered control message) is recorded once. A `cancel` the provider accepted also moves the
-- job to `cancelled`, keeping its callbacks: what was dialled so far.
-- KEYS[1] job hash.
-- ARGV[1] operation id, [2] operation (pause, resume, complete, stop-contacts, update, cancel),
--   [3] now ISO, [4] outcome (done, refused, failed), [5] the status the answer gives (running,
--   paused, completed) or '' (unchanged), [6] orders stopped, [7] detail (JSON object: the
--   answer or the error, no secrets, no numbers), [8] '1': move the job to cancelled,
--   [9] operations kept, [10] record TTL s.
-- Returns {status, state after}: status 1 recorded, 0 already recorded, -1 no record; state
--   after is the job's state (cancelled when the move was made).
-- moves: submitted -> cancelled
-- Beyond KEYS, set_state touches the job indexes, the retention hash and the metrics counters
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
--#include lib/fields.lua
local jk = KEYS[1]
local cur = redis.call('HMGET', jk, 'state', FIELD.CAMPAIGN_FIELD)
if not cur[1] then return {-1, ''} end
local campaign = {}
if cur[2] and cur[2] ~= '' then campaign = cjson.decode(cur[2]) end
local ops = campaign.operations or {}
for _, op in ipairs(ops) do
  if op.id == ARGV[1] then return {0, cur[1]} end
end
local now, status = ARGV[3], ARGV[5]
local entry = {id = ARGV[1], op = ARGV[2], at = now, outcome = ARGV[4]}
local detail = cjson.decode(ARGV[7])
if next(detail) ~= nil then entry.detail = detail end
ops[#ops + 1] = entry
local keep = tonumber(ARGV[9])
while #ops > keep do table.remove(ops, 1) end
campaign.operations = ops
if status ~= '' then
  local was = campaign.status
  campaign.status = status
  if status == 'paused' then campaign.paused_at = now
  elseif status == 'completed' then campaign.completed_at = now
  elseif status == 'running' and was == 'paused' then campaign.resumed_at = now end
end
campaign.stopped_orders = (campaign.stopped_orders or 0) + tonumber(ARGV[6])
local state = cur[1]
local text = cjson.encode(campaign)
if ARGV[8] == '1' then
  local moved = set_state(jk, 'cancelled', 'updated_at', now, FIELD.CAMPAIGN_FIELD, text)
  if moved then
    state = 'cancelled'
    keep_record(jk, state, tonumber(ARGV[10]))
    return {1, state}
  end
end
redis.call('HSET', jk, FIELD.CAMPAIGN_FIELD, text, 'updated_at', now)
return {1, state}
