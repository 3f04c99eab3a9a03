-- Appends one entry to each of several histories (operator actions: replays, purges,
-- pauses; identities resolved).
-- KEYS[1..n] history sorted sets
-- ARGV[1] max entries  ARGV[2] max age (ms)  ARGV[3] now (ms)
-- ARGV[4..] at (ms), entry JSON pairs, one per key
for i = 1, #KEYS do
  append_history(KEYS[i], ARGV[2 * i + 2], ARGV[2 * i + 3], ARGV[1], ARGV[2], ARGV[3])
end
return #KEYS
