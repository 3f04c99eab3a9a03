-- Takes a slot of a request rate shared by every process: a sliding-window log of the grants
-- of the last window. Timed by Redis's clock, so processes on hosts whose clocks differ still
-- agree on what the window holds.
-- KEYS[1] sorted set of the grants in the window, scored by their time (µs)
-- ARGV[1] most grants in any window  ARGV[2] the window (µs)
-- ARGV[3] a member naming this grant, unique across processes
-- Returns {1, now (µs)} when a slot was taken, {0, wait (µs)} when the window is full: how
-- long until its oldest grant leaves it.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Numbers go to Redis as text, where Lua's default format keeps only 14 digits; '%d' keeps
-- the microseconds. A grant exactly one window old no longer counts.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[3])
  -- An idle limit leaves nothing behind.
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return {1, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
