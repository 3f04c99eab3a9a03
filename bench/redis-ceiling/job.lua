-- The Redis work of ARGV[1] happy-path convergence jobs (claim and finish), ids ARGV[2] and
-- up, done by one script call of `bench/redis-ceiling.sh`: how fast Redis alone could run
-- lease-sync's jobs, with no worker, no OpenApp and no batching code around it. Commands and
-- value sizes are those of the real scripts (begin_attempt.lua, finish_attempt.lua, the
-- history prelude), key names too; the keys are built here rather than passed in KEYS, which
-- is a measurement tool's shortcut, not the queue's contract.
-- ARGV[3] now (ms)  ARGV[4] the attempt's history entry  ARGV[5] the attempt record
-- ARGV[6] layout: `lists` (attempt records in a list beside the ledger: releases up to
-- 2026-12-04), `records-in-hash` (in the ledger hash: this release), `lock-in-hash` (also the
-- resident lock as fields of the resident hash: measured, not adopted), `three-writes` (a
-- floor: the resident, the ledger and the history written once each, nothing read)
-- ARGV[7] the history entry of the fold that queued the job
local n, now, layout = tonumber(ARGV[1]), ARGV[3], ARGV[6]
local building = '01HBENCHINT000000000000000'
for i = 0, n - 1 do
  local id = tostring(tonumber(ARGV[2]) + i)
  local user = building .. ':u01m90f2vny0k1ej0h0k092kcm0-' .. id
  local ledger = '{bench}:delivery:01M90F0H66W0NR20ND82N' .. id
  local resident, history = '{bench}:resident:' .. user, '{bench}:history:' .. user
  local list, lock = ledger .. ':attempts', '{bench}:lock:' .. user
  if layout == 'three-writes' then
    redis.call('HSET', resident, 'lock', 'tok', 'applied', 'present', 'applied_version', '1', 'applied_at', now)
    redis.call('HSET', ledger, 'status', 'delivered', 'delivered_at', now, 'record:1', ARGV[5])
    redis.call('ZADD', history, now, ARGV[4])
  else
    local lock_in_hash = layout == 'lock-in-hash'
    local in_hash = layout ~= 'lists'
    -- the claim
    if not lock_in_hash then redis.call('SET', lock, 'tok', 'NX', 'PX', '30000') end
    redis.call('HMGET', ledger, 'current_task', 'attempts', 'open', 'started_at', 'records')
    redis.call('HSET', ledger, 'attempts', '1', 'open', '0', 'started_at', now)
    redis.call('HGETALL', resident)
    if lock_in_hash then redis.call('HSET', resident, 'lock', 'tok', 'lock_until', now) end
    -- the finish
    redis.call('HMGET', ledger, 'current_task', 'overrode', 'open', 'records', 'attempts', 'replays')
    if lock_in_hash then
      redis.call('HSET', resident, 'applied', 'present', 'applied_version', '1', 'applied_at', now, 'managed', '1',
        'lock', '', 'lock_until', '0')
    else
      redis.call('HSET', resident, 'applied', 'present', 'applied_version', '1', 'applied_at', now, 'managed', '1')
    end
    redis.call('SADD', '{bench}:residents:' .. building, id)
    redis.call('HGET', resident, 'version')
    if not lock_in_hash then redis.call('GETDEL', lock) end
    redis.call('ZREM', '{bench}:jobs:in-flight', id)
    redis.call('HDEL', '{bench}:jobs:data', id)
    redis.call('PTTL', history)
    redis.call('ZADD', history, now, ARGV[4], tostring(tonumber(now) - 500), ARGV[7])
    redis.call('PEXPIRE', history, '31536000000')
    if in_hash then
      redis.call('HSET', ledger, 'status', 'delivered', 'delivered_at', now, 'current_task', '', 'open', '0',
        'started_at', '0', 'record:1', ARGV[5], 'records', '1')
      redis.call('EXPIRE', ledger, '86400')
    else
      redis.call('RPUSH', list, ARGV[5])
      redis.call('HSET', ledger, 'status', 'delivered', 'delivered_at', now, 'current_task', '', 'open', '0',
        'started_at', '0')
      redis.call('EXPIRE', ledger, '86400')
      redis.call('EXPIRE', list, '86400')
    end
  end
end
redis.call('HINCRBY', '{bench}:stats', 'delivered', n)
return n
