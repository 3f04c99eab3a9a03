-- Claims a dead letter and queues it again with a fresh attempt budget, atomically: of two
-- concurrent replays of one entry, exactly one finds it in the set.
-- KEYS[1] dead-letter zset  KEYS[2] delivery hash  KEYS[3] attempts list (where the replay
-- marker goes when the ledger has no `records` field, as finish_attempt.lua)  KEYS[4] job data
-- KEYS[5] ready list
-- ARGV[1] delivery id  ARGV[2] new job id  ARGV[3] now (ms)  ARGV[4] actor
-- Returns 1 when queued, 0 when the entry is not (or no longer) a dead letter.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local ledger = redis.call('HMGET', KEYS[2], 'job', 'records')
local job = ledger[1]
if not job then
  return 0
end
local task = ARGV[2]
local marker = cjson.encode({outcome = 'replayed', at = tonumber(ARGV[3]), by = ARGV[4]})
if ledger[2] then
  -- The delivery keeps its records in its hash (finish_attempt.lua).
  local n = tonumber(ledger[2]) + 1
  redis.call('HSET', KEYS[2], 'status', 'pending', 'attempts', 0, 'open', 0, 'current_task', task,
    'record:' .. n, marker, 'records', n)
else
  redis.call('HSET', KEYS[2], 'status', 'pending', 'attempts', 0, 'open', 0, 'current_task', task)
  redis.call('RPUSH', KEYS[3], marker)
end
redis.call('HDEL', KEYS[2], 'reason', 'dead_at')
redis.call('HINCRBY', KEYS[2], 'replays', 1)
redis.call('HSET', KEYS[4], task, job)
redis.call('RPUSH', KEYS[5], task)
return 1
