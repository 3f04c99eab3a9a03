-- Schedules a convergence of a resident at a future moment (a lease window opening or
-- closing), unless one is already due no later than that.
-- KEYS[1] resident hash  KEYS[2] delivery hash  KEYS[3] {q}:data  KEYS[4] {q}:meta (prefix)
-- KEYS[5] {q}:scheduled  KEYS[6] convergences index (due by task, for the pending gauge)
-- ARGV[1] due (ms)  ARGV[2] now (ms)  ARGV[3] task id  ARGV[4] job JSON  ARGV[5] event JSON
local due = tonumber(ARGV[1])
local pending = tonumber(redis.call('HGET', KEYS[1], 'next_check') or '0')
if pending > tonumber(ARGV[2]) and pending <= due then
  return 0
end
redis.call('HSET', KEYS[1], 'next_check', due)
local task = ARGV[3]
redis.call('HSET', KEYS[2], 'job', ARGV[4], 'event', ARGV[5], 'first_seen', ARGV[2], 'attempts', 0,
  'current_task', task, 'status', 'pending', 'replays', 0)
redis.call('HSET', KEYS[3], task, ARGV[4])
redis.call('HSET', KEYS[4] .. ':' .. task, 'attempts', 0, 'max_attempts', 0,
  'status', 'Pending', 'idempotency_key', '', 'ready_at', due)
redis.call('ZADD', KEYS[5], due, task)
redis.call('ZADD', KEYS[6], due, task)
return 1
