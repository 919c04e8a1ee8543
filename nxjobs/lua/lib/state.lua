-- set_state(jk, to, ...): the one place a script writes a job's `state`. Moves the job hash `jk`
-- to state `to`, setting the field/value pairs `...` in the same HSET, if the transition table
-- (nxjobs.store.ALLOWED_FROM, rendered below as ALLOWED_FROM) allows it from the state the job
-- is in now and the script being run declares the move in a `-- moves:` line (MOVES).
-- Returns (true, state before) when written, (false, state before) when refused, nothing
-- written; state before is false for a job with no record (`new` in the table and the moves).
-- With the write it keeps the job indexes (nxjobs.keys.job_index: the id leaves the old state's
-- sorted set and enters the new one's, scored by Redis TIME; a finished state, not INDEXED, is
-- counted in METRICS_COUNTERS instead) and, for a state the retention hash
-- (nxjobs.keys.RETENTION) names, expires the record and its payload key after that state's
-- retention, and the items hash of a paged job with them. Keys it touches that are not in the
-- caller's KEYS: those indexes, the retention hash, the metrics counters, the payload and items
-- keys, all named by the keys render from nxjobs.keys.
-- Every move is PUBLISHed on the job's channel (KEY.JOB_CHANNEL_PREFIX .. id, message: the new
-- state; nothing is sent with no subscriber), and entering an EVENT_STATES state adds one entry
-- to the events stream KEY.EVENTS (id, kind, state, at = unix ms), trimmed to about its maxlen
-- (KEY.EVENTS_SETTINGS `maxlen`, else EVENTS_MAXLEN_DEFAULT).
-- keep_record(jk, state, ttl): what a script calls instead of EXPIRE after set_state: the record
-- TTL `ttl`, unless `state` has its own retention (then set_state has set it already).
--#include lib/keys.lua
--#render states
local function set_state(jk, to, ...)
  local cur = redis.call('HMGET', jk, 'state', 'kind')
  local from, kind = cur[1], cur[2]
  local was = from or ''
  local table_allows, script_moves = ALLOWED_FROM[to], MOVES[to]
  if not (table_allows and table_allows[was] and script_moves and script_moves[was]) then
    return false, from
  end
  redis.call('HSET', jk, 'state', to, ...)
  if not kind then kind = redis.call('HGET', jk, 'kind') end
  local id = string.sub(jk, #KEY.JOB_KEY_PREFIX + 1)
  if kind then
    if from and INDEXED[from] then redis.call('ZREM', job_index_key(kind, from), id) end
    if INDEXED[to] then
      redis.call('ZADD', job_index_key(kind, to), redis.call('TIME')[1], id)
    else
      redis.call('HINCRBY', KEY.METRICS_COUNTERS, finished_count(kind, to), 1)
    end
  end
  if EVENT_STATES[to] then
    local now = redis.call('TIME')
    local maxlen = redis.call('HGET', KEY.EVENTS_SETTINGS, 'maxlen') or EVENTS_MAXLEN_DEFAULT
    redis.call('XADD', KEY.EVENTS, 'MAXLEN', '~', maxlen, '*', 'id', id, 'kind', kind or '',
      'state', to, 'at', now[1] * 1000 + math.floor(now[2] / 1000))
  end
  redis.call('PUBLISH', KEY.JOB_CHANNEL_PREFIX .. id, to)
  local keep = redis.call('HGET', KEY.RETENTION, to)
  if keep then
    redis.call('EXPIRE', jk, keep)
    redis.call('EXPIRE', jk .. KEY.JOB_PAYLOAD_SUFFIX, keep)
    redis.call('EXPIRE', jk .. KEY.JOB_ITEMS_SUFFIX, keep)
  end
  return true, from
end
local function keep_record(jk, state, ttl)
  if not redis.call('HGET', KEY.RETENTION, state) then
    redis.call('EXPIRE', jk, ttl)
    -- A paged job's items hash (lib/items.lua) lives as long as its record; a no-op for others.
    redis.call('EXPIRE', jk .. KEY.JOB_ITEMS_SUFFIX, ttl)
  end
end
