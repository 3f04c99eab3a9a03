-- Puts a job off without using an attempt (its resident is busy with another worker): the
-- held job ends, and a new one is scheduled for the delivery.
-- KEYS[1] delivery hash  KEYS[2] job data hash  KEYS[3] scheduled set  KEYS[4] stats hash
-- KEYS[5] in-flight set
-- ARGV[1] held job id  ARGV[2] new job id  ARGV[3] due (ms)
-- The new job carries the held one's payload (from the job data hash; from the ledger for a
-- delivery queued in layout 2 whose data entry is gone).
-- Returns 1 if deferred, 0 if the held job was stale or has no payload left (it just ends).
local job = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'current_task') ~= ARGV[1] then
  return 0
end
job = job or redis.call('HGET', KEYS[1], 'job')
if not job then
  return 0
end
local task = ARGV[2]
redis.call('HSET', KEYS[1], 'current_task', task)
redis.call('HSET', KEYS[2], task, job)
redis.call('ZADD', KEYS[3], ARGV[3], task)
redis.call('HINCRBY', KEYS[4], 'deferred', 1)
return 1
