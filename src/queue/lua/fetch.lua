-- Hands up to ARGV[1] ready jobs to a worker: pops their ids from the head of the ready list
-- and holds each in the in-flight set until ARGV[2]; the worker renews its holds while it
-- runs them, and a hold that lapses (the worker died) is recovered by recover.lua. An id whose
-- payload is gone (purged meanwhile) is dropped.
-- KEYS[1] ready list  KEYS[2] in-flight set  KEYS[3] job data hash
-- ARGV[1] most jobs  ARGV[2] hold until (ms)
-- Returns {id, job JSON, id, job JSON, ...}
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then
  return {}
end
local jobs = redis.call('HMGET', KEYS[3], unpack(ids))
local out, holds = {}, {}
for i, id in ipairs(ids) do
  if jobs[i] then
    out[#out + 1] = id
    out[#out + 1] = jobs[i]
    holds[#holds + 1] = ARGV[2]
    holds[#holds + 1] = id
  end
end
if #holds > 0 then
  redis.call('ZADD', KEYS[2], unpack(holds))
end
return out
