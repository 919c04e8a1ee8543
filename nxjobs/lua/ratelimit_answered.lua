-- A request's answer is back (RateLimiter.answered). The provider counts a request when it
-- arrives, which on a busy host can be well after we logged it; it arrived no later than now:
-- move its log entry there, so the window never undercounts it.
-- KEYS: the send logs of its limits. ARGV[1] its log member.
-- Returns 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1]) end
return 0
