-- A person of a source was resolved to an OpenApp user: their conflict, if any, goes, and the
-- user is remembered for them. Writes only what changes: with `appendfsync always` each write
-- is an fsync, and a pull resolves every tenant again.
-- KEYS[1] conflicts hash  KEYS[2] person-users hash of the source
-- ARGV[1] the conflict's field  ARGV[2] the person  ARGV[3] the user id
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return 1
