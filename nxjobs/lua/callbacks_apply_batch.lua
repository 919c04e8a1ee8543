-- Apply the callbacks of many requests in one call (BatchApplier): callbacks_apply.lua once per
-- entry, each atomically and on its own: one that raises fails only its own entry (pcall),
-- never its neighbours.
-- KEYS: none (each entry carries its own).
-- ARGV[1] JSON [[keys, args], ...], each as callbacks_apply.lua takes them.
-- Returns one reply per entry: callbacks_apply.lua's, or {-1, message} when that entry raised.
-- Included here, above apply_one, so their tables are built once per call, not per callback.
-- Beyond KEYS, set_state touches the job indexes, the retention hash, the payload key, the
-- events stream and its settings, and publishes on the job's channel
-- (lib/state.lua; their names rendered from nxjobs.keys).
--#include lib/state.lua
--#include lib/fields.lua
--#include lib/items.lua
--#include lib/member_index.lua
local function apply_one(KEYS, ARGV)
--#include callbacks_apply.lua
end
local out = {}
for i, entry in ipairs(cjson.decode(ARGV[1])) do
  local ok, reply = pcall(apply_one, entry[1], entry[2])
  if ok then
    out[i] = reply
  else
    out[i] = {-1, tostring(reply)}
  end
end
return out
