-- Folds one event into the state of each of its residents and queues a convergence job for
-- every resident whose state it changed; or does nothing if the event was seen already.
-- With an empty lease record it instead forgets the lease (an operator's reset): the record
-- is removed from each resident that holds one from ARGV[8], and each is converged again.
-- KEYS[1] dedupe marker  KEYS[2] job data hash  KEYS[3] ready list  KEYS[4] stats hash
-- KEYS[5] the building's residents index (a set of user ids)  KEYS[6] the layout marker
-- KEYS[7..] triples, one per resident: resident hash, the ledger hash of its new delivery,
-- the resident's history
-- ARGV[1] dedupe ttl (s)  ARGV[2] now (ms)  ARGV[3] event JSON  ARGV[4] lease id
-- ARGV[5] lease record JSON, or '' to forget the lease
-- ARGV[6] digest of the event ('sha256:<hex>'), kept in the dedupe marker
-- ARGV[7] future cutoff (ms): a recorded version later than this was written by a clock
--         running ahead (or by an event accepted before such events were refused) and
--         never outranks an incoming event
-- ARGV[8] source (whose records a reset forgets)
-- ARGV[9] history: most entries per resident  ARGV[10] its max age (ms)
-- ARGV[11] the history entry of a resident the event did not change (JSON)
-- ARGV[12..] quadruples, one per resident (same order as the key triples): job id, job JSON,
-- user id, and for a reset the history entry of a resident it changes (JSON). A fold that
-- changes a resident writes no history here: its entry is written when its convergence first
-- runs (begin_attempt.lua), from the job, so ingest writes nothing more per resident than
-- before (one more key per event cost a third of ingest's rate under appendfsync always).
-- A fold that replaced a record dated in the future marks its ledger hash `overrode`.
-- The job's JSON goes into the job data hash only, where the fetch reads it; the ledger gets
-- a copy when the delivery is dead-lettered (finish_attempt.lua, begin_attempt.lua). Only
-- while the namespace is in layout 2 (a rollout from a release whose workers read retries'
-- and deferrals' payloads from the ledger) does the ledger get one here too.
-- Returns {queued, stale, overridden}: overridden counts future-dated records replaced;
-- {-1, 0, 0} for a duplicate event, {-2, 0, 0} for another event under a known id.
if not redis.call('SET', KEYS[1], ARGV[6], 'NX', 'EX', ARGV[1]) then
  local seen = redis.call('GET', KEYS[1])
  -- Markers written before digests were kept hold a time: nothing to compare them with.
  if seen and string.sub(seen, 1, 7) == 'sha256:' and seen ~= ARGV[6] then
    return {-2, 0, 0}
  end
  return {-1, 0, 0}
end
local forget = ARGV[5] == ''
local incoming = (not forget) and cjson.decode(ARGV[5]) or nil
local cutoff = tonumber(ARGV[7])
-- Version order: occurred_at, then ended (rank 1) over signed (rank 0), then event id.
local function newer(a, b)
  if a.occurred_at ~= b.occurred_at then return a.occurred_at > b.occurred_at end
  if a.rank ~= b.rank then return a.rank > b.rank end
  return a.event_id > b.event_id
end
local field = 'lease:' .. ARGV[4]
local queued, stale, overridden = 0, 0, 0
local ledger_keeps_job = nil
local k = 7
for i = 12, #ARGV, 4 do
  local task, job, user, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local resident, ledger, history = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  local raw = redis.call('HGET', resident, field)
  local recorded = raw and cjson.decode(raw) or nil
  local changes
  local overrode = false
  if forget then
    changes = recorded ~= nil and recorded.source == ARGV[8]
  elseif recorded == nil then
    changes = true
  elseif recorded.occurred_at > cutoff then
    changes = true
    overridden = overridden + 1
    overrode = true
  else
    changes = newer(incoming, recorded)
  end
  if not changes then
    -- Older than (or the same as) what this lease already says, or nothing to forget.
    stale = stale + 1
    append_history(history, ARGV[2], ARGV[11], ARGV[9], ARGV[10], ARGV[2])
  else
    if forget then
      redis.call('HDEL', resident, field)
    else
      redis.call('HSET', resident, field, ARGV[5])
    end
    redis.call('HINCRBY', resident, 'version', 1)
    redis.call('SADD', KEYS[5], user)
    redis.call('HSET', ledger,
      'event', ARGV[3], 'first_seen', ARGV[2], 'attempts', 0, 'open', 0,
      'current_task', task, 'status', 'pending', 'replays', 0, 'records', 0)
    if ledger_keeps_job == nil then
      ledger_keeps_job = redis.call('GET', KEYS[6]) == '2'
    end
    if ledger_keeps_job then
      redis.call('HSET', ledger, 'job', job)
    end
    if overrode then
      redis.call('HSET', ledger, 'overrode', 1)
    end
    redis.call('HSET', KEYS[2], task, job)
    redis.call('RPUSH', KEYS[3], task)
    if forget then
      append_history(history, ARGV[2], entry, ARGV[9], ARGV[10], ARGV[2])
    end
    queued = queued + 1
  end
end
if stale > 0 and not forget then
  redis.call('HINCRBY', KEYS[4], 'stale_events', stale)
end
if overridden > 0 then
  redis.call('HINCRBY', KEYS[4], 'future_versions_overridden', overridden)
end
return {queued, stale, overridden}
