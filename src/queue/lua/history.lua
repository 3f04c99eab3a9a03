-- Shared by the scripts that write a resident's history (prepended to each of them).
-- Appends `entry` (JSON) at time `at` (ms) to the history sorted set `key` — and `entry2` at
-- `at2` when given, in the same ZADD — then keeps at most `max_entries` (the oldest go first).
-- The whole set expires once nothing new came for `max_age_ms`: its time to live is renewed
-- only when more than a day of it was used, and only then are entries older than `max_age_ms`
-- (as of `now`, the caller's clock) removed — reads hide them meanwhile — so most appends write
-- nothing but the entries (each write costs an fsync under appendfsync always, and every
-- command here runs for every job).
-- A history that did not exist (a resident's first convergence, the common case while a
-- building is being loaded) needs no count and no trim unless what was just added already
-- breaks a limit, which is checked here without asking Redis: one command fewer per entry
-- written costs two fewer commands per job on that path.
-- Times and limits go to Redis as the strings they came in: a Lua number passed to
-- `redis.call` is formatted with `%.17g`, which showed in Redis's profile.
-- A cap of 0 entries records nothing.
local function append_history(key, at, entry, max_entries, max_age_ms, now, at2, entry2)
  local cap, age = tonumber(max_entries), tonumber(max_age_ms)
  if cap <= 0 or age <= 0 then return end
  local ttl = redis.call('PTTL', key)
  if entry2 then
    redis.call('ZADD', key, at, entry, at2, entry2)
  else
    redis.call('ZADD', key, at, entry)
  end
  local oldest = tonumber(now) - age
  if ttl == -2 then
    if cap < (entry2 and 2 or 1) then
      redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
    end
    if tonumber(at) < oldest or (entry2 and tonumber(at2) < oldest) then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', oldest))
    end
    redis.call('PEXPIRE', key, max_age_ms)
    return
  end
  if redis.call('ZCARD', key) > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
  end
  if ttl < 0 or ttl < age - 86400000 then
    -- Removing nothing is not replicated: only a real trim costs a write.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', oldest))
    redis.call('PEXPIRE', key, max_age_ms)
  end
end
