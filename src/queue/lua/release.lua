-- Returns jobs a worker holds but will not run (it is stopping) to the head of the ready
-- list, each only if still held: one finished meanwhile is left alone.
-- KEYS[1] in-flight set  KEYS[2] ready list  ARGV job ids
-- Returns how many were returned.
local released = 0
for _, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('LPUSH', KEYS[2], id)
    released = released + 1
  end
end
return released
