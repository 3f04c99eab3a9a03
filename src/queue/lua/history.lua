-- Shared by the scripts that write a resident's history (prepended to each of them).
-- Appends `entry` (JSON) at time `at` (ms) to the history sorted set `key`, then keeps the
-- set within its caps: nothing older than `max_age_ms` by Redis's clock, at most
-- `max_entries` (the oldest go first), and the whole set expires once nothing new came for
-- `max_age_ms`. A cap of 0 entries records nothing.
local function append_history(key, at, entry, max_entries, max_age_ms)
  max_entries = tonumber(max_entries)
  max_age_ms = tonumber(max_age_ms)
  if max_entries <= 0 or max_age_ms <= 0 then return end
  redis.call('ZADD', key, tonumber(at), entry)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', now - max_age_ms))
  if redis.call('ZCARD', key) > max_entries then
    redis.call('ZREMRANGEBYRANK', key, 0, -(max_entries + 1))
  end
  redis.call('PEXPIRE', key, max_age_ms)
end
