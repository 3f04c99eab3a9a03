-- Reads the queue's depths in one atomic step, so a job on its way from the ready list to the
-- in-flight set (or from the scheduled set to the ready list) is counted once, never missed:
-- a "drained" queue is really drained. Constant time: no SCAN, no loop.
-- KEYS[1] ready list  KEYS[2] scheduled set  KEYS[3] dead-letter zset  KEYS[4] in-flight set
-- KEYS[5] the layout marker
-- Returns {ready, scheduled, dead, in_flight, the oldest ready job's id or '', the layout or
-- ''}; a job id is a ULID whose time is when the job became ready.
return {
  redis.call('LLEN', KEYS[1]),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]),
  redis.call('LINDEX', KEYS[1], 0) or '',
  redis.call('GET', KEYS[5]) or '',
}
