-- Deletes a dead letter and its records. Returns 1 when it existed.
-- KEYS[1] dead-letter zset  KEYS[2] delivery hash  KEYS[3] attempts list  ARGV[1] delivery id
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
