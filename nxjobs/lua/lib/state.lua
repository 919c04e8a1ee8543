-- set_state(jk, to, ...): the one place a script writes a job's `state`. Moves the job hash `jk`
-- to state `to`, setting the field/value pairs `...` in the same HSET, if the transition table
-- (nxjobs.store.ALLOWED_FROM, rendered below as ALLOWED_FROM) allows it from the state the job
-- is in now and the script being run declares the move in a `-- moves:` line (MOVES).
-- Returns (true, state before) when written, (false, state before) when refused, nothing
-- written; state before is false for a job with no record (`new` in the table and the moves).
--#render states
local function set_state(jk, to, ...)
  local from = redis.call('HGET', jk, 'state')
  local was = from or ''
  local table_allows, script_moves = ALLOWED_FROM[to], MOVES[to]
  if not (table_allows and table_allows[was] and script_moves and script_moves[was]) then
    return false, from
  end
  redis.call('HSET', jk, 'state', to, ...)
  return true, from
end
