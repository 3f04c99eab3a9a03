-- Puts a task off without using an attempt (its resident is busy with another worker).
-- KEYS[1] delivery hash  KEYS[2] {q}:data  KEYS[3] {q}:meta (prefix)  KEYS[4] {q}:scheduled
-- KEYS[5] stats hash
-- ARGV[1] apalis task id  ARGV[2] new task id  ARGV[3] due (ms)
if redis.call('HGET', KEYS[1], 'current_task') ~= ARGV[1] then
  return 0
end
local task = ARGV[2]
redis.call('HSET', KEYS[1], 'current_task', task)
redis.call('HSET', KEYS[2], task, redis.call('HGET', KEYS[1], 'job'))
redis.call('HSET', KEYS[3] .. ':' .. task, 'attempts', 0, 'max_attempts', 0,
  'status', 'Pending', 'idempotency_key', '', 'ready_at', ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[3], task)
redis.call('HINCRBY', KEYS[5], 'deferred', 1)
return 1
