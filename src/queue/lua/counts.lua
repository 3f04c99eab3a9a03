-- Reads the queue's depths in one atomic step, so a task on its way from the active list to a
-- worker's in-flight set (or from the scheduled set to the active list) is counted once, never
-- missed: a "drained" queue is really drained.
-- KEYS[1] {q}:active  KEYS[2] {q}:scheduled  KEYS[3] dead-letter zset  KEYS[4] {q}:workers
-- KEYS[5..] in-flight sets found by SCAN (those of workers no longer registered included)
-- ARGV[1] in-flight key prefix ('{q}:inflight:')  ARGV[2] task meta key prefix ('{q}:meta:')
-- The in-flight sets of registered workers are named here from {q}:workers: a worker's set
-- only exists once it holds a task, so one created after the SCAN is still counted.
-- Returns {ready, scheduled, dead, in_flight, ready_at of the oldest ready task or -1}
local sets = {}
for i = 5, #KEYS do sets[KEYS[i]] = true end
for _, name in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  sets[ARGV[1] .. name] = true
end
local in_flight = 0
for key in pairs(sets) do
  in_flight = in_flight + redis.call('SCARD', key)
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
