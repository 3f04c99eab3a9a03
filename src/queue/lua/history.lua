-- Shared by the scripts that write a resident's history (prepended to each of them).
-- Appends `entry` (JSON) at time `at` (ms) to the history sorted set `key` — and `entry2` at
-- `at2` when given, in the same ZADD — then keeps at most `max_entries` (the oldest go first).
-- The whole set expires once nothing new came for `max_age_ms`: its time to live is renewed
-- only when more than a day of it was used, and only then are entries older than `max_age_ms`
-- (as of `now`, the caller's clock) removed — reads hide them meanwhile — so most appends write
-- nothing but the entries (each write costs an fsync under appendfsync always, and every
-- command here runs for every job).
-- A cap of 0 entries records nothing.
local function append_history(key, at, entry, max_entries, max_age_ms, now, at2, entry2)
  max_entries = tonumber(max_entries)
  max_age_ms = tonumber(max_age_ms)
  if max_entries <= 0 or max_age_ms <= 0 then return end
  if entry2 then
    redis.call('ZADD', key, tonumber(at), entry, tonumber(at2), entry2)
  else
    redis.call('ZADD', key, tonumber(at), entry)
  end
  if redis.call('ZCARD', key) > max_entries then
    redis.call('ZREMRANGEBYRANK', key, 0, -(max_entries + 1))
  end
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or ttl < max_age_ms - 86400000 then
    -- Removing nothing is not replicated: only a real trim costs a write.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', tonumber(now) - max_age_ms))
    redis.call('PEXPIRE', key, max_age_ms)
  end
end
