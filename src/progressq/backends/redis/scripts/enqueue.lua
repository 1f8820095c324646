-- Store a new task, index it under its owner and queue it, unless the queue is full. It
-- waits in its owner's list; an owner with waiting tasks is in the ring that take.lua turns.
-- A task to run later waits in the delayed set instead, until take.lua promotes it.
-- KEYS: 1 task hash, 2 owner index, 3 counters, 4 the owner's waiting list,
--       5 unfinished tasks per owner, 6 ring of owners with waiting tasks, 7 wake-up list,
--       8 delayed tasks, 9 the owner's unique keys (a hash: key -> the id of its unfinished task)
-- ARGV: 1 task id, 2 record, 3 owner, 4 created (ms), 5 revision, 6 capacity (0: none), 7 retention (s),
--       8 when it may run (ms since the epoch; 0: now), 9 its unique key ('': none)
-- Returns 1 when queued, 0 when the queue is full, -1 when the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local capacity = tonumber(ARGV[6])
if capacity > 0 and tonumber(redis.call('HGET', KEYS[3], 'queued') or '0') >= capacity then
  return 0
end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'owner', ARGV[3], 'rev', ARGV[5], 'attempt', 0,
  'state', 'queued', 'entry', '', 'deliveries', 0, 'cancel', 0, 'pub', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
-- the owner's index lives as long as one of its tasks is unfinished, then `retention` more
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
redis.call('PERSIST', KEYS[2])
redis.call('HINCRBY', KEYS[3], 'queued', 1)
if (ARGV[9] or '') ~= '' then
  -- the key names this task until it ends: save.lua and cancel.lua free it (`uniq`, `ukey`)
  redis.call('HSET', KEYS[9], ARGV[9], ARGV[1])
  redis.call('HSET', KEYS[1], 'uniq', KEYS[9], 'ukey', ARGV[9])
end
if tonumber(ARGV[8] or '0') > 0 then
  redis.call('ZADD', KEYS[8], ARGV[8], ARGV[1])
  return 1
end
if redis.call('RPUSH', KEYS[4], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[6], ARGV[3])  -- its first waiting task: the owner joins the ring
end
-- one waiting worker wakes up per task (a few tokens kept for workers not yet waiting)
redis.call('LPUSH', KEYS[7], 1)
redis.call('LTRIM', KEYS[7], 0, 63)
return 1
