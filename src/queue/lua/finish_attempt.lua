-- Records how an attempt ended and carries out the decision, atomically.
-- KEYS[1] delivery hash  KEYS[2] attempts list  KEYS[3] dead-letter zset  KEYS[4] stats hash
-- KEYS[5] job data hash  KEYS[6] in-flight set  KEYS[7] scheduled set
-- ARGV[1] job id (it ends here, whatever the outcome but 'moved': it leaves the in-flight
-- set and its payload is dropped)  ARGV[2] now (ms)  ARGV[3] kind: delivered | retry | dead
-- ARGV[4] the attempt's whole record (JSON; the claim wrote none: the ledger's `started_at`
-- marked the attempt open). It goes into the ledger hash as `record:<n>` with `records` = n,
-- in the same HSET that closes the attempt, when the ledger has a `records` field (queued by
-- this release: one key per delivery instead of two, two writes fewer per job); else to the
-- attempts list of a delivery queued by an earlier release.  ARGV[5] delivery id
-- ARGV[6] retry task id  ARGV[7] retry due (ms)  ARGV[8] dead reason  ARGV[9] '1' if 401/403
-- ARGV[10] seconds a delivered record is kept for inspection
-- KEYS[8] the resident lock  ARGV[11] its token: released here if still ours ('' = keep it),
-- which saves the worker a round trip; stale or not, like the separate unlock it replaces.
-- The last two ARGV (after the optional ones below) say where the claim took the lock
-- ('hash': KEYS[8] is the resident hash, its `lock` field; 'key': a key of its own,
-- begin_attempt.lua) and its time to live (ms): a lock key found to be another holder's (ours
-- expired and was taken) is put back with it. A lock in the resident hash is released by
-- emptying `lock`, only if it holds our token, in the HSET that records what was applied when
-- there is one (KEYS[10]): the happy path releases it without a command of its own.
-- KEYS[9] the resident's history  ARGV[12] the attempt's history entry (JSON; '' for none);
-- its outcome becomes 'superseded' or 'stale' when the answer is 'moved' or 'stale'
-- ARGV[13] history: most entries  ARGV[14] its max age (ms)
-- ARGV[15] the time (ms) and ARGV[16] the history entry of the fold that queued the
-- convergence, on its first attempt ('' otherwise): written with the attempt's entry, as
-- `overrode_future` if the fold replaced a future-dated record (the ledger says `overrode`)
-- A convergence whose call succeeded also passes KEYS[10] the resident hash and KEYS[11] the
-- integration's residents index, ARGV[17] what OpenApp was made to show ('present', 'absent',
-- or 'check': no call was needed), ARGV[18] the state version the call was made for, ARGV[19]
-- the user id, ARGV[20] '1' to finish even if the state moved. That is recorded first; if an
-- event moved the state during the call, nothing else happens (the lock stays held) and the
-- answer is 'moved': the worker converges again.
-- The job's JSON is read from the job data hash (the ledger has a copy only when written in
-- layout 2, enqueue.lua): a retry queues it under its new task id, a dead letter keeps it in
-- its ledger (replay.lua and the dead-letter views read it there). A retry or dead letter
-- whose payload is in neither place is refused before anything is written (it cannot run
-- again); its hold lapses and the fetch drops it, as it drops any job without a payload.
-- `count` comes from the prelude (batch.rs): within a batch each counter is added once.
local ledger = redis.call('HMGET', KEYS[1], 'current_task', 'overrode', 'open', 'records', 'attempts', 'replays')
local payload = nil
if ARGV[3] ~= 'delivered' and ledger[1] == ARGV[1] then
  payload = redis.call('HGET', KEYS[5], ARGV[1]) or redis.call('HGET', KEYS[1], 'job')
  if not payload then
    return redis.error_reply('the payload of job ' .. ARGV[1] .. ' is gone')
  end
end
local function history(outcome)
  if ARGV[12] == '' then return end
  local entry = ARGV[12]
  if outcome then
    local e = cjson.decode(entry)
    e.outcome = outcome
    entry = cjson.encode(e)
  end
  local fold = ARGV[16]
  if fold == '' then
    append_history(KEYS[9], ARGV[2], entry, ARGV[13], ARGV[14], ARGV[2])
    return
  end
  if ledger[2] then
    fold = string.gsub(fold, '"outcome":"changed"', '"outcome":"overrode_future"', 1)
  end
  append_history(KEYS[9], ARGV[2], entry, ARGV[13], ARGV[14], ARGV[2], ARGV[15], fold)
end
local in_hash_lock = ARGV[#ARGV - 1] == 'hash'
local released = false
if KEYS[10] then
  -- In layout 4 the state version and the lock are read together; the lock is released with
  -- what was applied, unless the state moved (the worker converges again under it).
  local version, holder
  if in_hash_lock then
    local read = redis.call('HMGET', KEYS[10], 'version', 'lock')
    version, holder = read[1], read[2]
  end
  local release = {}
  local function moved()
    if not in_hash_lock then version = redis.call('HGET', KEYS[10], 'version') end
    return (version or '0') ~= ARGV[18] and ARGV[20] ~= '1'
  end
  if in_hash_lock and ARGV[11] ~= '' and holder == ARGV[11] and not moved() then
    release = {'lock', ''}
  end
  released = in_hash_lock
  if ARGV[17] == 'present' then
    redis.call('HSET', KEYS[10], 'applied', ARGV[17], 'applied_version', ARGV[18], 'applied_at', ARGV[2],
      'managed', '1', unpack(release))
    redis.call('SADD', KEYS[11], ARGV[19])
  elseif ARGV[17] ~= 'check' then
    redis.call('HSET', KEYS[10], 'applied', ARGV[17], 'applied_version', ARGV[18], 'applied_at', ARGV[2],
      unpack(release))
  elseif #release > 0 then
    redis.call('HSET', KEYS[10], unpack(release))
  end
  if moved() then
    history('superseded')
    return 'moved'
  end
end
if ARGV[11] ~= '' and not released then
  if in_hash_lock then
    if redis.call('HGET', KEYS[8], 'lock') == ARGV[11] then
      redis.call('HSET', KEYS[8], 'lock', '')
    end
  else
    -- One command in the common case (the lock is ours); another holder's lock is put back.
    local holder = redis.call('GETDEL', KEYS[8])
    if holder and holder ~= ARGV[11] then
      redis.call('SET', KEYS[8], holder, 'PX', ARGV[#ARGV])
    end
  end
end
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if ledger[1] ~= ARGV[1] then
  history('stale')
  return 'stale'
end
history(nil)
local now = tonumber(ARGV[2])
local kind = ARGV[3]
-- The record's fields, written with the ledger's other fields below.
local record = {}
if ledger[4] then
  local n = tonumber(ledger[4]) + 1
  record = {'record:' .. n, ARGV[4], 'records', n}
elseif ledger[3] == '0' then
  redis.call('RPUSH', KEYS[2], ARGV[4])
else
  -- Claimed by a release that pushed a `started` record (no `open` = '0' in the ledger):
  -- the record replaces it. No list (it expired, or was purged): nothing to write over.
  redis.pcall('LSET', KEYS[2], -1, ARGV[4])
end
if ARGV[9] == '1' then
  count(KEYS[4], 'auth_failures')
end
if kind == 'delivered' then
  redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', ARGV[2], 'current_task', '',
    'open', '0', 'started_at', '0', unpack(record))
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  -- A list expires with its ledger. A delivery that keeps its records in its hash has none,
  -- unless a worker of an earlier release recorded an attempt of it during a rolling upgrade,
  -- which needs an attempt before this one or a replay: on the first attempt of a delivery
  -- never replayed (the happy path) there is no list to expire.
  if not ledger[4] or ledger[5] ~= '1' or (ledger[6] and ledger[6] ~= '0') then
    redis.call('EXPIRE', KEYS[2], ARGV[10])
  end
  count(KEYS[4], 'delivered')
  -- A lease window opening or closing later needs a convergence then: KEYS[12] the new
  -- delivery's hash, KEYS[13] the convergences index (due by task, for the pending gauge),
  -- ARGV[21] due (ms), ARGV[22] its task id, ARGV[23] its job JSON, KEYS[14] the layout
  -- marker (in layout 2 the new ledger keeps a copy of the job). Skipped when one is already
  -- due no later than that.
  if KEYS[12] then
    local due = tonumber(ARGV[21])
    local pending = tonumber(redis.call('HGET', KEYS[10], 'next_check') or '0')
    if not (pending > now and pending <= due) then
      local task = ARGV[22]
      redis.call('HSET', KEYS[10], 'next_check', ARGV[21])
      redis.call('HSET', KEYS[12], 'event', '{}', 'first_seen', ARGV[2],
        'attempts', '0', 'open', '0', 'current_task', task, 'status', 'pending', 'replays', 0,
        'records', 0)
      if redis.call('GET', KEYS[14]) == '2' then
        redis.call('HSET', KEYS[12], 'job', ARGV[23])
      end
      redis.call('HSET', KEYS[5], task, ARGV[23])
      redis.call('ZADD', KEYS[7], ARGV[21], task)
      redis.call('ZADD', KEYS[13], ARGV[21], task)
      return 'delivered+scheduled'
    end
  end
elseif kind == 'retry' then
  local task = ARGV[6]
  local due = ARGV[7]
  redis.call('HSET', KEYS[1], 'current_task', task, 'open', '0', 'started_at', '0', unpack(record))
  redis.call('HSET', KEYS[5], task, payload)
  redis.call('ZADD', KEYS[7], due, task)
  count(KEYS[4], 'retries')
else
  redis.call('HSET', KEYS[1], 'status', 'dead', 'reason', ARGV[8], 'dead_at', ARGV[2], 'current_task', '',
    'open', '0', 'started_at', '0', 'job', payload, unpack(record))
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
  count(KEYS[4], 'dead_lettered')
end
return kind
