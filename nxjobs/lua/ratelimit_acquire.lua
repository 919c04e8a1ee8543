-- Reserve a rate-limit slot (RateLimiter.acquire). Two checks in one script. Scheduling: GCRA
-- over a TAT (theoretical arrival time) per limit hands out evenly spaced future slots. Sending:
-- when a slot is due, an exact sliding-window log of real sends (what the provider itself
-- counts) must have room, so a late sender delays the next by a few ms rather than putting
-- quota + 1 requests inside one provider window. Times are integer microseconds (Redis TIME).
-- KEYS: per limit i: TAT, cooldown-until, send log (3 keys each).
-- ARGV[1] n (limits), [2] horizon_us, [3] prepaid_us (0 = none), [4] early_us, then per limit:
--   interval_us, tolerance_us, window_limit (0 = no log), window_us.
-- Returns {status, wait_us, slot_us, log member}:
--   2 = go now (the send is logged under that member); 1 = slot_us is reserved for us, come
--   back in wait_us; 0 = nothing reserved: the next slot is beyond the horizon, come back in
--   about wait_us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local prepaid = tonumber(ARGV[3])
local early = tonumber(ARGV[4])
local function arg(i, j) return tonumber(ARGV[4 + 4 * (i - 1) + j]) end
local start = now
for i = 1, n do
  local cd = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0')
  if cd > start then start = cd end
end
local slot
if prepaid > 0 and start == now then
  slot = prepaid  -- reserved earlier, and no cooldown began since
else
  slot = start
  local tats = {}
  for i = 1, n do
    local tat = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0')
    tats[i] = tat
    if tat - arg(i, 2) > slot then slot = tat - arg(i, 2) end
  end
  if slot - now > horizon then return {0, slot - now, slot} end
  for i = 1, n do
    local new_tat = math.max(tats[i], slot) + arg(i, 1)
    redis.call('SET', KEYS[3 * i - 2], string.format('%d', new_tat), 'PX',
               math.floor((new_tat - now) / 1000) + 1000)
  end
end
if slot - now > early then return {1, slot - now, slot} end
local hold = 0
for i = 1, n do
  local limit, window = arg(i, 3), arg(i, 4)
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now - window)
    if redis.call('ZCARD', KEYS[3 * i]) >= limit then
      local oldest = tonumber(redis.call('ZRANGE', KEYS[3 * i], 0, 0, 'WITHSCORES')[2])
      if oldest + window - now > hold then hold = oldest + window - now end
    end
  end
end
if hold > 0 then return {1, hold, now + hold} end
local member = string.format('%d-%d', now, slot)
for i = 1, n do
  if arg(i, 3) > 0 then
    redis.call('ZADD', KEYS[3 * i], now, member)
    redis.call('PEXPIRE', KEYS[3 * i], math.floor(arg(i, 4) / 1000) + 1000)
  end
end
return {2, 0, slot, member}
