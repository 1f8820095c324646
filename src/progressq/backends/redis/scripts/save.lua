-- Store a task's new state if the writer still holds the current attempt (fencing).
-- KEYS: 1 task hash, 2 counters, 3 owner index, 4 unfinished tasks per owner,
--       5 running tasks per owner, 6 the owner's waiting list, 7 wake-up list, 8 failed tasks
-- ARGV: 1 attempt, 2 record, 3 revision, 4 status, 5 terminal (0/1), 6 retention (s),
--       7 cancel channel, 8 task id, 9 owner
-- Returns 1 when stored, 0 when fenced out.
local h = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'cancel')
if h[1] ~= 'leased' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'rev', ARGV[3], 'status', ARGV[4])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('HINCRBY', KEYS[2], 'running', -1)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if redis.call('HINCRBY', KEYS[4], ARGV[9], -1) <= 0 then
    redis.call('HDEL', KEYS[4], ARGV[9])
    redis.call('EXPIRE', KEYS[3], ARGV[6])
  end
  -- its unique key (enqueue.lua) may name a new task now
  local unique = redis.call('HMGET', KEYS[1], 'uniq', 'ukey')
  if unique[1] and redis.call('HGET', unique[1], unique[2]) == ARGV[8] then
    redis.call('HDEL', unique[1], unique[2])
  end
  if ARGV[4] == 'failed' then
    local now = redis.call('TIME')
    redis.call('ZADD', KEYS[8], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), ARGV[8])
  end
  if redis.call('HINCRBY', KEYS[5], ARGV[9], -1) <= 0 then
    redis.call('HDEL', KEYS[5], ARGV[9])
  end
  if redis.call('EXISTS', KEYS[6]) == 1 then
    -- below its cap again: a waiting worker may take the owner's next task
    redis.call('LPUSH', KEYS[7], 1)
    redis.call('LTRIM', KEYS[7], 0, 63)
  end
elseif h[3] == '1' and ARGV[4] == 'running' then
  -- cancel was asked before this attempt started: tell its worker again
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return 1
