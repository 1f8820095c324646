-- Cancel a task for its owner: a queued one becomes cancelled (and leaves its owner's
-- waiting list), a leased one is flagged and its worker told.
-- KEYS: 1 task hash, 2 counters, 3 owner index, 4 unfinished tasks per owner, 5 the owner's
--       waiting list, 6 ring of owners with waiting tasks, 7 delayed tasks
-- ARGV: 1 owner, 2 expected revision, 3 cancelled record, 4 its revision, 5 retention (s),
--       6 cancel channel, 7 task id
-- Returns 0 not theirs, 1 cancelled, 2 requested, 3 already finished, 4 changed meanwhile.
local h = redis.call('HMGET', KEYS[1], 'owner', 'state', 'rev')
if h[1] ~= ARGV[1] then
  return 0
end
if h[2] == 'done' then
  return 3
end
if h[2] == 'leased' then
  redis.call('HSET', KEYS[1], 'cancel', 1)
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 2
end
if h[3] ~= ARGV[2] then
  return 4
end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'rev', ARGV[4], 'status', 'cancelled', 'state', 'done', 'cancel', 1)
redis.call('HINCRBY', KEYS[2], 'queued', -1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
if redis.call('HINCRBY', KEYS[4], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
if redis.call('LREM', KEYS[5], 1, ARGV[7]) == 1 and redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('LREM', KEYS[6], 0, ARGV[1])
end
-- its unique key (enqueue.lua) may name a new task now
local unique = redis.call('HMGET', KEYS[1], 'uniq', 'ukey')
if unique[1] and redis.call('HGET', unique[1], unique[2]) == ARGV[7] then
  redis.call('HDEL', unique[1], unique[2])
end
redis.call('ZREM', KEYS[7], ARGV[7])
return 1
