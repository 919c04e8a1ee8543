-- The provider still said "too frequent" (RateLimiter.cool_down): push every worker's next slot
-- of these limits back; a repeat within the strike ttl doubles the step, up to the cap.
-- KEYS: per limit i, KEYS[2i-1] strikes counter, KEYS[2i] cooldown-until.
-- ARGV[1] n (limits), [2] base_us, [3] cap_us, [4] jitter (0..1, fraction of the step to
--   randomise), [5] strike_ttl_ms.
-- Returns the longest cooldown in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local jitter = tonumber(ARGV[4])
local longest = 0
for i = 1, n do
  local strikes = redis.call('INCR', KEYS[2 * i - 1])
  redis.call('PEXPIRE', KEYS[2 * i - 1], tonumber(ARGV[5]))
  local step = math.min(cap, base * 2 ^ (strikes - 1))
  local length = step * (1 - jitter)
  local untl = now + length
  local cur = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if untl > cur then
    redis.call('SET', KEYS[2 * i], string.format('%d', untl), 'PX',
               math.floor(length / 1000) + 1000)
    cur = untl
  end
  if cur - now > longest then longest = cur - now end
end
return longest
