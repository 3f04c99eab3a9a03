-- Moves up to ARGV[2] due job ids from the scheduled set to the tail of the ready list.
-- KEYS[1] scheduled set  KEYS[2] ready list  ARGV[1] now (ms)  ARGV[2] chunk
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
