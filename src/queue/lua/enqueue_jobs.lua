-- Queues jobs that fold nothing at ingest (a Buildium event's refresh), or nothing at all if
-- the event was seen already.
-- KEYS[1] dedupe marker  KEYS[2] job data hash  KEYS[3] ready list  KEYS[4] layout marker
-- KEYS[5..] the ledger hash of each job's delivery
-- Each job's JSON goes into the job data hash only; into the ledger too in layout 2 (see
-- enqueue.lua).
-- ARGV[1] dedupe ttl (s)  ARGV[2] now (ms)  ARGV[3] event JSON (kept with each delivery)
-- ARGV[4] digest of the event ('sha256:<hex>'), kept in the dedupe marker
-- ARGV[5..] pairs, one per job (same order as the ledger keys): job id, job JSON
-- Returns the number of jobs queued; -1 for a duplicate event, -2 for another event under a
-- known id.
if not redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[1]) then
  local seen = redis.call('GET', KEYS[1])
  if seen and string.sub(seen, 1, 7) == 'sha256:' and seen ~= ARGV[4] then
    return -2
  end
  return -1
end
local queued = 0
local ledger_keeps_job = redis.call('GET', KEYS[4]) == '2'
local k = 5
for i = 5, #ARGV, 2 do
  local task, job = ARGV[i], ARGV[i + 1]
  redis.call('HSET', KEYS[k],
    'event', ARGV[3], 'first_seen', ARGV[2], 'attempts', 0, 'open', 0,
    'current_task', task, 'status', 'pending', 'replays', 0, 'records', 0)
  if ledger_keeps_job then
    redis.call('HSET', KEYS[k], 'job', job)
  end
  k = k + 1
  redis.call('HSET', KEYS[2], task, job)
  redis.call('RPUSH', KEYS[3], task)
  queued = queued + 1
end
return queued
