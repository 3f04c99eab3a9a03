-- Queues every delivery of one event, or nothing if the event was seen already.
-- KEYS[1] dedupe marker       KEYS[2] {q}:data         KEYS[3] {q}:active
-- KEYS[4] {q}:meta (prefix)   KEYS[5] delivery (prefix)
-- ARGV[1] dedupe ttl (s)  ARGV[2] now (ms)  ARGV[3] event JSON
-- ARGV[4..] triples: apalis task id, delivery id, job JSON
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then
  return -1
end
local n = 0
for i = 4, #ARGV, 3 do
  local task, delivery, job = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('HSET', KEYS[5] .. ':' .. delivery,
    'job', job, 'event', ARGV[3], 'first_seen', ARGV[2], 'attempts', 0,
    'current_task', task, 'status', 'pending', 'replays', 0)
  redis.call('HSET', KEYS[2], task, job)
  -- The fields apalis-redis's fetch requires, plus when the job became ready.
  redis.call('HSET', KEYS[4] .. ':' .. task, 'attempts', 0, 'max_attempts', 0,
    'status', 'Pending', 'idempotency_key', '', 'ready_at', ARGV[2])
  redis.call('RPUSH', KEYS[3], task)
  n = n + 1
end
return n
