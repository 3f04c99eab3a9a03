-- Folds one event into the state of each of its residents and queues a convergence job for
-- every resident whose state it changed; or does nothing if the event was seen already.
-- KEYS[1] dedupe marker       KEYS[2] {q}:data         KEYS[3] {q}:active
-- KEYS[4] {q}:meta (prefix)   KEYS[5] delivery (prefix) KEYS[6] stats hash
-- ARGV[1] dedupe ttl (s)  ARGV[2] now (ms)  ARGV[3] event JSON  ARGV[4] lease id
-- ARGV[5] lease record JSON   ARGV[6] residents index key (a set of user ids)
-- ARGV[7..] groups of 5: apalis task id, delivery id, job JSON, resident key, user id
-- Returns {queued, stale}; {-1, 0} for a duplicate event.
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[1]) then
  return {-1, 0}
end
local incoming = cjson.decode(ARGV[5])
-- Version order: occurred_at, then ended (rank 1) over signed (rank 0), then event id.
local function newer(a, b)
  if a.occurred_at ~= b.occurred_at then return a.occurred_at > b.occurred_at end
  if a.rank ~= b.rank then return a.rank > b.rank end
  return a.event_id > b.event_id
end
local field = 'lease:' .. ARGV[4]
local queued, stale = 0, 0
for i = 7, #ARGV, 5 do
  local task, delivery, job, resident, user = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local recorded = redis.call('HGET', resident, field)
  if recorded and not newer(incoming, cjson.decode(recorded)) then
    -- Older than (or the same as) what this lease already says: changes nothing.
    stale = stale + 1
  else
    redis.call('HSET', resident, field, ARGV[5])
    redis.call('HINCRBY', resident, 'version', 1)
    redis.call('SADD', ARGV[6], user)
    redis.call('HSET', KEYS[5] .. ':' .. delivery,
      'job', job, 'event', ARGV[3], 'first_seen', ARGV[2], 'attempts', 0,
      'current_task', task, 'status', 'pending', 'replays', 0)
    redis.call('HSET', KEYS[2], task, job)
    -- The fields apalis-redis's fetch requires, plus when the job became ready.
    redis.call('HSET', KEYS[4] .. ':' .. task, 'attempts', 0, 'max_attempts', 0,
      'status', 'Pending', 'idempotency_key', '', 'ready_at', ARGV[2])
    redis.call('RPUSH', KEYS[3], task)
    queued = queued + 1
  end
end
if stale > 0 then
  redis.call('HINCRBY', KEYS[6], 'stale_events', stale)
end
return {queued, stale}
