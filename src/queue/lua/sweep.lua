-- Housekeeping of apalis-redis's own sets, which it never trims (apalis-redis#10).
-- KEYS[1] {q}:done  KEYS[2] {q}:dead  KEYS[3] {q}:data  KEYS[4] {q}:meta (prefix)
-- KEYS[5] {q}:active  KEYS[6] delivery (prefix)  ARGV[1] chunk  ARGV[2] now (ms)
-- Acknowledged tasks: their data and meta are no longer needed (lease-sync's ledger holds
-- what matters). Tasks apalis gave up on by itself (its hard 25-attempt cap after repeated
-- Redis errors): back to the active list while their delivery still expects them, so
-- lease-sync's own budget decides; otherwise dropped.
-- Returns {done removed, dead requeued, dead dropped}
local removed, requeued, dropped = 0, 0, 0
for _, id in ipairs(redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))) do
  redis.call('HDEL', KEYS[3], id)
  redis.call('DEL', KEYS[4] .. ':' .. id)
  removed = removed + 1
end
for _, id in ipairs(redis.call('SPOP', KEYS[2], tonumber(ARGV[1]))) do
  local job = redis.call('HGET', KEYS[3], id)
  local ok, decoded = pcall(cjson.decode, job or '')
  local current = false
  if ok and type(decoded) == 'table' and decoded.delivery_id then
    current = redis.call('HGET', KEYS[6] .. ':' .. decoded.delivery_id, 'current_task') == id
  end
  if current then
    redis.call('HSET', KEYS[4] .. ':' .. id, 'attempts', 0, 'status', 'Pending', 'ready_at', ARGV[2])
    redis.call('HDEL', KEYS[4] .. ':' .. id, 'done_at', 'result')
    redis.call('RPUSH', KEYS[5], id)
    requeued = requeued + 1
  else
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', KEYS[4] .. ':' .. id)
    dropped = dropped + 1
  end
end
return {removed, requeued, dropped}
