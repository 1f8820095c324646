-- Store a task's state (queued) and queue it again, if the writer holds the current attempt:
-- first in its owner's waiting list (it had its turn already), or, when it is to run later
-- (a retry's backoff), in the delayed set that take.lua promotes from.
-- KEYS: 1 task hash, 2 stream, 3 counters, 4 running tasks per owner, 5 the owner's waiting
--       list, 6 ring of owners with waiting tasks, 7 wake-up list, 8 delayed tasks
-- ARGV: 1 attempt, 2 record, 3 revision, 4 group, 5 task id, 6 owner, 7 when it may run
--       (ms since the epoch; 0: now)
-- Returns 1 when queued again, 0 when fenced out.
local h = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'entry')
if h[1] ~= 'leased' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('XACK', KEYS[2], ARGV[4], h[3])
redis.call('XDEL', KEYS[2], h[3])
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'rev', ARGV[3], 'status', 'queued', 'state', 'queued',
  'entry', '', 'deliveries', 0)
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'queued', 1)
if redis.call('HINCRBY', KEYS[4], ARGV[6], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[6])
end
local now = redis.call('TIME')
if tonumber(ARGV[7]) > tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
  redis.call('ZADD', KEYS[8], ARGV[7], ARGV[5])
  return 1
end
if redis.call('LPUSH', KEYS[5], ARGV[5]) == 1 then
  redis.call('RPUSH', KEYS[6], ARGV[6])
end
redis.call('LPUSH', KEYS[7], 1)
redis.call('LTRIM', KEYS[7], 0, 63)
return 1
