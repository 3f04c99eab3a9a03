-- Counts an attempt before the OpenApp call, so a worker that dies mid-call still uses one.
-- A convergence also takes its resident's lock and reads the resident's state here, so that
-- claiming a job is one round trip.
-- KEYS[1] delivery hash  KEYS[2] its attempts list (records of a delivery without `records`)
-- KEYS[3] dead-letter zset  KEYS[4] stats hash  KEYS[5] in-flight set  KEYS[6] job data hash
-- KEYS[7] resident lock, KEYS[8] resident hash, KEYS[9] the resident's history, KEYS[10] the
-- paused integrations hash, KEYS[11] the integration's held list, KEYS[12] the layout marker
-- (convergences only)
-- ARGV[1] job id  ARGV[2] max attempts  ARGV[3] now (ms)  ARGV[4] delivery id
-- ARGV[5] lock token, ARGV[6] lock ttl (ms), ARGV[7] integration id, ARGV[8] history: most
-- entries, ARGV[9] its max age (ms), ARGV[10] the history entry of the fold that queued the
-- convergence ('' for none), written here when it is held and when a later attempt begins
-- (the first attempt's finish writes it with its outcome, finish_attempt.lua, so a happy-path
-- job appends to the history once); the same entry each time, so writing it again changes
-- nothing (convergences only)
-- No record is written here: the delivery's `started_at` field holds the start (ms) of its
-- last attempt (number `attempts`) from here until the finish writes that attempt's whole
-- record ('0' or absent: none open), which saves a write per job. A claim that finds one
-- still open records it as `crashed`: its worker died. Where records go: a delivery with a
-- `records` field (queued by this release) keeps them in its hash as `record:1` ..
-- `record:<records>`; one without (queued by an earlier release) in its attempts list.
-- Releases before 2026-12-04 pushed a `started` record here instead; the `open` field says
-- whether the last list record may be one of those ('1', or absent on a delivery written
-- before the field existed: checked each time; '0': not), to be marked crashed in place.
-- `hexists_shared`, `get_shared`, `redis_now_ms` and `count` come from the prelude (batch.rs):
-- within a batch the pause check, the layout and the time are read once and the counters
-- added once.
-- A convergence of a paused integration is held instead: it leaves the in-flight set for the
-- held list (its payload stays), nothing is counted and no lock taken: {'held', 0, '', {}}.
-- Where the resident's lock lives depends on the layout (the marker, read once per batch with
-- `get_shared`): from layout 4 in the resident hash itself, as `lock` (the holder's token; ''
-- or absent: free) and `lock_until` (ms, Redis's clock: `redis_now_ms`), which the claim reads
-- with the state it reads anyway and writes with one HSET, and the finish releases in the HSET
-- it makes anyway (finish_attempt.lua): one command and one key's creation and deletion fewer
-- per job than a lock key of its own. Layouts 2 and 3 keep the key KEYS[7] (`SET NX PX`), which
-- the workers of the releases before take, so that both releases exclude each other during a
-- rolling upgrade. A resident with no hash (forgotten) is not locked in layout 4: there is
-- nothing to converge, and a later round finds the lock not its own (a lost lock).
-- Returns {'run', n, ''} | {'stale', 0, ''} | {'dead', attempts, reason}; with the lock keys
-- a fourth element, the resident hash (HGETALL) for 'run' and empty otherwise, and a fifth,
-- where the lock was taken ('hash' or 'key'; for 'run'); and {'busy', ms the lock still lives,
-- '', {}} when another worker holds the resident (nothing counted). Only 'run' holds the lock
-- afterwards. With 'stale' and 'dead' the job ends here: it leaves the in-flight set and its
-- payload is dropped.
local locking = #KEYS >= 8
local function history(entry)
  if locking then
    entry.at = tonumber(ARGV[3])
    append_history(KEYS[9], ARGV[3], cjson.encode(entry), ARGV[8], ARGV[9], ARGV[3])
  end
end
local function record_fold()
  if not locking or not ARGV[10] or ARGV[10] == '' then return end
  local entry = ARGV[10]
  if redis.call('HEXISTS', KEYS[1], 'overrode') == 1 then
    entry = string.gsub(entry, '"outcome":"changed"', '"outcome":"overrode_future"', 1)
  end
  local at = cjson.decode(entry).at
  append_history(KEYS[9], at, entry, ARGV[8], ARGV[9], ARGV[3])
end
if locking and hexists_shared(KEYS[10], ARGV[7]) then
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('RPUSH', KEYS[11], ARGV[1])
  record_fold()
  history({kind = 'held', delivery_id = ARGV[4]})
  return {'held', 0, '', {}}
end
local in_hash_lock = locking and tonumber(get_shared(KEYS[12]) or '0') >= 4
local resident
if in_hash_lock then
  resident = redis.call('HGETALL', KEYS[8])
  local holder, held_until = nil, 0
  for i = 1, #resident, 2 do
    local field = resident[i]
    if field == 'lock' then
      holder = resident[i + 1]
    elseif field == 'lock_until' then
      held_until = tonumber(resident[i + 1]) or 0
    end
  end
  if holder and holder ~= '' then
    local left = held_until - redis_now_ms()
    if left > 0 then return {'busy', left, '', {}} end
  end
elseif locking and not redis.call('SET', KEYS[7], ARGV[5], 'NX', 'PX', ARGV[6]) then
  return {'busy', redis.call('PTTL', KEYS[7]), '', {}}
end
local function answer(kind, n, reason)
  if kind ~= 'run' then
    redis.call('ZREM', KEYS[5], ARGV[1])
    redis.call('HDEL', KEYS[6], ARGV[1])
  end
  if not locking then return {kind, n, reason} end
  if in_hash_lock then
    if kind ~= 'run' then return {kind, n, reason, {}} end
    if #resident > 0 then
      redis.call('HSET', KEYS[8], 'lock', ARGV[5], 'lock_until', string.format('%d', redis_now_ms() + tonumber(ARGV[6])))
    end
    return {kind, n, reason, resident, 'hash'}
  end
  if kind == 'run' then return {kind, n, reason, redis.call('HGETALL', KEYS[8]), 'key'} end
  if redis.call('GET', KEYS[7]) == ARGV[5] then redis.call('DEL', KEYS[7]) end
  return {kind, n, reason, {}}
end
local ledger = redis.call('HMGET', KEYS[1], 'current_task', 'attempts', 'open', 'started_at', 'records')
if ledger[1] ~= ARGV[1] then
  -- Finished, replayed or superseded by a retry: a duplicate run of an old task.
  count(KEYS[4], 'stale_tasks')
  return answer('stale', 0, '')
end
local now = tonumber(ARGV[3])
local in_hash = ledger[5]
local records = tonumber(ledger[5] or '0')
local last = not in_hash and ledger[3] ~= '0' and redis.call('LINDEX', KEYS[2], -1)
if last then
  local record = cjson.decode(last)
  if record.outcome == 'started' then
    -- The previous attempt never reported back: its worker died.
    record.outcome = 'crashed'
    record.finished_at = now
    record.message = 'the worker stopped during this attempt (killed, crashed or shut down)'
    redis.call('LSET', KEYS[2], -1, cjson.encode(record))
  end
end
if ledger[4] and ledger[4] ~= '0' then
  -- The previous attempt never reported back: its worker died.
  local crashed = cjson.encode({attempt = tonumber(ledger[2] or '0'), task = ARGV[1],
    started_at = tonumber(ledger[4]), outcome = 'crashed', finished_at = now,
    message = 'the worker stopped during this attempt (killed, crashed or shut down)'})
  if in_hash then
    records = records + 1
    redis.call('HSET', KEYS[1], 'record:' .. records, crashed, 'records', records)
  else
    redis.call('RPUSH', KEYS[2], crashed)
  end
end
-- The last k attempt records, oldest first.
local function last_records(k)
  if not in_hash then
    return redis.call('LRANGE', KEYS[2], -k, -1)
  end
  local fields = {}
  for i = math.max(1, records - k + 1), records do
    fields[#fields + 1] = 'record:' .. i
  end
  if #fields == 0 then return {} end
  local found = {}
  for _, r in ipairs(redis.call('HMGET', KEYS[1], unpack(fields))) do
    if r then found[#found + 1] = r end
  end
  return found
end
local max = tonumber(ARGV[2])
local made = tonumber(ledger[2] or '0')
if made >= max then
  -- Budget used up by crashes: the last min(3, max) attempts all crashed → crash_loop.
  local k = math.min(3, max)
  local crashes = 0
  for _, r in ipairs(last_records(k)) do
    if cjson.decode(r).outcome == 'crashed' then crashes = crashes + 1 end
  end
  local reason = 'exhausted'
  if crashes == k then reason = 'crash_loop' end
  -- The dead letter keeps the job (replay.lua reads it from the ledger), which the ledger of
  -- a delivery queued in layout 3 does not hold until now (enqueue.lua).
  local job = redis.call('HGET', KEYS[6], ARGV[1])
  if job then
    redis.call('HSET', KEYS[1], 'job', job)
  end
  redis.call('HSET', KEYS[1], 'status', 'dead', 'reason', reason, 'dead_at', ARGV[3], 'current_task', '',
    'open', '0', 'started_at', '0')
  redis.call('ZADD', KEYS[3], now, ARGV[4])
  count(KEYS[4], 'dead_lettered')
  history({kind = 'dead_lettered', delivery_id = ARGV[4], reason = reason, attempts = made})
  return answer('dead', made, reason)
end
local n = made + 1
redis.call('HSET', KEYS[1], 'attempts', n, 'open', '0', 'started_at', ARGV[3])
if n > 1 then record_fold() end
return answer('run', n, '')
