-- Moves up to ARGV[2] convergence job ids held for a paused integration back to the ready
-- list, oldest first — unless the integration was paused again meanwhile.
-- KEYS[1] the integration's held list  KEYS[2] ready list  KEYS[3] paused integrations hash
-- ARGV[1] integration id  ARGV[2] most ids to move
-- Returns how many moved, or -1 when the integration is paused (nothing moved).
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -1 end
local moved = 0
for _ = 1, tonumber(ARGV[2]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  redis.call('RPUSH', KEYS[2], id)
  moved = moved + 1
end
return moved
