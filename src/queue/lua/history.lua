-- Shared by the scripts that write a resident's history (prepended to each of them).
-- Appends `entry` (JSON) at time `at` (ms) to the history sorted set `key`, then keeps the
-- set within its caps as of `now` (ms, the caller's clock): nothing older than `max_age_ms`,
-- at most `max_entries` (the oldest go first). The whole set expires once nothing new came for
-- `max_age_ms`: its time to live is renewed only when less than a day of it was used, so most
-- appends write nothing but the entry (each write costs an fsync under appendfsync always).
-- A cap of 0 entries records nothing.
local function append_history(key, at, entry, max_entries, max_age_ms, now)
  max_entries = tonumber(max_entries)
  max_age_ms = tonumber(max_age_ms)
  if max_entries <= 0 or max_age_ms <= 0 then return end
  redis.call('ZADD', key, tonumber(at), entry)
  -- Removing nothing is not replicated: only a real trim costs a write.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', tonumber(now) - max_age_ms))
  if redis.call('ZCARD', key) > max_entries then
    redis.call('ZREMRANGEBYRANK', key, 0, -(max_entries + 1))
  end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or ttl < max_age_ms - 86400000 then
    redis.call('PEXPIRE', key, max_age_ms)
  end
end
