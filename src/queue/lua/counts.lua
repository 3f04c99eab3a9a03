-- Reads the queue's depths in one atomic step, so a task on its way from the active list to a
-- worker's in-flight set (or from the scheduled set to the active list) is counted once, never
-- missed: a "drained" queue is really drained.
-- KEYS[1] {q}:active  KEYS[2] {q}:scheduled  KEYS[3] dead-letter zset  KEYS[4] {q}:workers
-- KEYS[5] the index of worker names lease-sync started (a set)
-- ARGV[1] in-flight key prefix ('{q}:inflight:')  ARGV[2] task meta key prefix ('{q}:meta:')
-- In-flight sets are those of registered workers (a worker's set only exists once it holds a
-- task, so one created later is still counted) and of every indexed name: a worker that died
-- without deregistering keeps its set, and its name stays indexed until that set is empty.
-- No SCAN: the cost grows with the workers, not with the keyspace.
-- Returns {ready, scheduled, dead, in_flight, ready_at of the oldest ready task or -1}
local registered = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  registered[name] = true
end
local names = {}
for name in pairs(registered) do names[name] = true end
for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do names[name] = true end
local in_flight = 0
for name in pairs(names) do
  local held = redis.call('SCARD', ARGV[1] .. name)
  in_flight = in_flight + held
  if held == 0 and not registered[name] then
    -- Gone and holding nothing. A worker indexes its name before it registers, so one
    -- starting now may lose its entry here; it is then counted through the workers set.
    redis.call('SREM', KEYS[5], name)
  end
end
local oldest = -1
local first = redis.call('LINDEX', KEYS[1], 0)
if first then
  local ready_at = redis.call('HGET', ARGV[2] .. first, 'ready_at')
  if ready_at then oldest = tonumber(ready_at) end
end
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  in_flight,
  oldest,
}
