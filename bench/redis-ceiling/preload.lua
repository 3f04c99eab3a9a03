-- What ingest leaves for jobs ARGV[1] .. ARGV[2]-1 of job.lua (same key names): the resident
-- with its lease record and version, the ledger with the job and the event, the job's
-- payload, the dedupe marker. ARGV[3] job JSON  ARGV[4] event JSON  ARGV[5] lease record JSON
for n = tonumber(ARGV[1]), tonumber(ARGV[2]) - 1 do
  local id = tostring(n)
  local user = '01HBENCHINT000000000000000:u01m90f2vny0k1ej0h0k092kcm0-' .. id
  local resident = '{bench}:resident:' .. user
  redis.call('HSET', resident, 'lease:L-01m90f2vny0k1ej0h0k092kcm0-' .. id, ARGV[5])
  redis.call('HINCRBY', resident, 'version', 1)
  redis.call('SADD', '{bench}:residents:01HBENCHINT000000000000000', id)
  redis.call('HSET', '{bench}:delivery:01M90F0H66W0NR20ND82N' .. id, 'job', ARGV[3], 'event', ARGV[4],
    'first_seen', '1796385894294', 'attempts', '0', 'open', '0', 'current_task', '01M90F2VWP7R9ZPADDDYWW8S9J',
    'status', 'pending', 'replays', '0', 'records', '0')
  redis.call('HSET', '{bench}:jobs:data', id, ARGV[3])
  redis.call('SET', '{bench}:dedupe:bench:evt_01m90f2vny0k1ej0h0k092kcm0_' .. id,
    'sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef', 'EX', '259200')
end
return 1
