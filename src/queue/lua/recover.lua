-- Returns up to ARGV[2] jobs whose hold lapsed by ARGV[1] (their worker died or lost Redis)
-- to the head of the ready list: they have waited longest. A job that had started counts
-- that attempt as crashed when it runs again (begin_attempt.lua).
-- KEYS[1] in-flight set  KEYS[2] ready list  ARGV[1] now (ms)  ARGV[2] chunk
-- Returns how many were returned.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('LPUSH', KEYS[2], unpack(ids))
end
return #ids
