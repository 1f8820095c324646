-- The Redis queue's part of the backend's script: what storing, taking and ending a task does
-- to the queue's keys. The script is this file, then taking.lua, then operations.lua, as one
-- (_calls.py joins them): these functions are the script's locals, used by the operations there.
-- Batched rows and named calls, and the conventions of both, are described in operations.lua.

-- The id of the owner's unfinished task with the new task's unique key, or nil.
-- keys: unique (the owner's unique keys: a hash, key -> the id of its unfinished task)
-- args: unique_key ('': none), task_prefix
local function key_holder(k, a)
  if a.unique_key == '' then
    return nil
  end
  local holder = redis.call('HGET', k.unique, a.unique_key)
  if holder then
    local state = redis.call('HGET', a.task_prefix .. holder, 'state')
    if state and state ~= 'done' then
      return holder
    end
  end
  return nil
end

-- A finished task's unique key may name a new task now (`enqueue` noted it in the task's hash).
-- keys: task; args: task_id; unique: the task's fields uniq and ukey, when read already
local function free_key(k, a, unique)
  unique = unique or redis.call('HMGET', k.task, 'uniq', 'ukey')
  if unique[1] and redis.call('HGET', unique[1], unique[2]) == a.task_id then
    redis.call('HDEL', unique[1], unique[2])
  end
end

-- An owner went to the back of the ring. With several shards (`stamps` passed), note when, in
-- microseconds of this Redis's clock: workers compare the owners at the front of each shard's
-- ring by it, so that turns go round the owners of every shard (see `due`).
-- keys: stamps (may be absent: one shard)
local function stamp(k, owner)
  if k.stamps then
    local now = redis.call('TIME')
    redis.call('HSET', k.stamps, owner, now[1] .. string.format('%06d', tonumber(now[2])))
  end
end

-- An owner left the ring.
local function unstamp(k, owner)
  if k.stamps then
    redis.call('HDEL', k.stamps, owner)
  end
end

-- Redis formats every Lua number handed to a command with snprintf('%.17g'), as `tostring`
-- does with '%.14g': several times the cost of a short command. The operations that run for
-- every task taken or queued hand Redis strings instead: literals, and these two.

-- An integer as its decimal text (string.format's integer path, not the float one).
local function decimal(n)
  return string.format('%d', n)
end

-- This Redis's clock in ms since the epoch, as text: TIME's seconds and the first three digits
-- of its microseconds (zero-padded to six).
local function now_ms()
  local now = redis.call('TIME')
  local micros = now[2]
  return now[1] .. string.sub(string.rep('0', 6 - #micros) .. micros, 1, 3)
end

-- A waiting worker may take a task: one token per task wakes one worker (BLPOP), and up to 64
-- are kept for workers not yet waiting. A full list is left as it is: one command, where a push
-- and a trim took two on every submit of a busy queue.
-- keys: wake
local function wake_one(k)
  if redis.call('LLEN', k.wake) < 64 then
    redis.call('LPUSH', k.wake, '1')
  end
end

-- What the tasks of one call change in common, left for the call's end (`settle`): the shard's
-- counts of queued and running tasks, the wake-up tokens and the stream entries to acknowledge,
-- one command each for the whole call where each task took one (a batch of 30 commits saved
-- ~100 commands). Nothing outside the call can see the difference: a script runs atomically.
local function tally()
  return {queued = 0, running = 0, wake = 0, acks = {}}
end

-- A count of the shard's (`counters`: queued, running) moved by `by`: at once without a tally.
local function count(k, t, field, by)
  if t then
    t[field] = t[field] + by
  else
    redis.call('HINCRBY', k.counters, field, decimal(by))
  end
end

-- keys: counters, wake, stream; group: the workers' group (for the acknowledgements)
local function settle(k, t, group)
  if t.queued ~= 0 then
    redis.call('HINCRBY', k.counters, 'queued', decimal(t.queued))
  end
  if t.running ~= 0 then
    redis.call('HINCRBY', k.counters, 'running', decimal(t.running))
  end
  if #t.acks > 0 then
    redis.call('XACK', k.stream, group, unpack(t.acks))
    redis.call('XDEL', k.stream, unpack(t.acks))
  end
  if t.wake > 0 then  -- as `wake_one` for each, in one push
    local room = math.min(t.wake, 64 - redis.call('LLEN', k.wake))
    if room > 0 then
      local tokens = {}
      for i = 1, room do
        tokens[i] = '1'
      end
      redis.call('LPUSH', k.wake, unpack(tokens))
    end
  end
end

-- A task reached a terminal state (stored as 'done' by the caller): it no longer counts as
-- running or unfinished, its record and (with no unfinished task left) its owner's index
-- expire after `retention`, its unique key is freed, a failed task is a dead letter, and a
-- worker waiting for its owner's next task (the owner was at its cap) is woken.
-- keys: task, counters, owner_tasks, unfinished, running, waiting, wake, dead
-- t: the call's tally (nil: none); unique: the task's uniq and ukey (nil: read here)
local function ended(k, retention, owner, task_id, status, t, unique)
  count(k, t, 'running', -1)
  redis.call('EXPIRE', k.task, retention)
  if redis.call('HINCRBY', k.unfinished, owner, -1) <= 0 then
    redis.call('HDEL', k.unfinished, owner)
    redis.call('EXPIRE', k.owner_tasks, retention)
  end
  free_key(k, {task_id = task_id}, unique)
  if status == 'failed' then
    redis.call('ZADD', k.dead, now_ms(), task_id)
  end
  if redis.call('HINCRBY', k.running, owner, -1) <= 0 then
    redis.call('HDEL', k.running, owner)
  end
  if redis.call('EXISTS', k.waiting) == 1 then
    -- below its cap again: a waiting worker may take the owner's next task
    if t then
      t.wake = t.wake + 1
    else
      wake_one(k)
    end
  end
end

-- An owner's count of unfinished tasks taken back (a submit counted a task it then refused).
-- keys: unfinished
local function uncount_unfinished(k, owner)
  if redis.call('HINCRBY', k.unfinished, owner, '-1') <= 0 then
    redis.call('HDEL', k.unfinished, owner)
  end
end

-- Store a new task, index it under its owner and queue it, unless the queue is full. It
-- waits in its owner's list; an owner with waiting tasks is in the ring that `take` turns.
-- A task to run later waits in the delayed set instead, until `take` promotes it.
-- A task with a unique key is noted as its key's holder until it ends (`free_key`); the caller
-- has checked that no unfinished task holds it (`key_holder`).
-- keys: task, owner_tasks, counters, waiting, unfinished, ring, wake, delayed, unique
-- args: task_id, record, owner, created (ms), revision, capacity ('0': none), retention (s),
--       run_at (ms since the epoch; '0': now), unique_key ('': none), pub (the revision already
--       announced; absent: none), renew (when the announcement set the owner's seq and history
--       to expire, this task is to again, see `commit`; absent: none), unfinished (the owner's count of unfinished
--       tasks with this one, when the caller has counted it already; absent: counted here)
-- t: the call's tally (see `settle`)
-- Returns 1 when queued, 0 when the queue is full, -1 when the id is taken.
local function enqueue(k, a, t)
  if redis.call('EXISTS', k.task) == 1 then
    return -1
  end
  local capacity = tonumber(a.capacity)
  if capacity > 0 and tonumber(redis.call('HGET', k.counters, 'queued') or '0') + t.queued >= capacity then
    return 0
  end
  if a.renew then
    redis.call('HSET', k.task, 'data', a.record, 'owner', a.owner, 'rev', a.revision, 'attempt', '0',
      'state', 'queued', 'entry', '', 'deliveries', '0', 'cancel', '0', 'pub', a.pub or '0', 'renew', a.renew)
  else
    redis.call('HSET', k.task, 'data', a.record, 'owner', a.owner, 'rev', a.revision, 'attempt', '0',
      'state', 'queued', 'entry', '', 'deliveries', '0', 'cancel', '0', 'pub', a.pub or '0')
  end
  redis.call('ZADD', k.owner_tasks, a.created, a.task_id)
  -- the owner's index lives as long as one of its tasks is unfinished, then `retention` more:
  -- only its first unfinished task can find it expiring (`ended` sets the expiry as it removes
  -- the owner's count, in the same step)
  if (a.unfinished or redis.call('HINCRBY', k.unfinished, a.owner, '1')) == 1 then
    redis.call('PERSIST', k.owner_tasks)
  end
  t.queued = t.queued + 1
  if a.unique_key ~= '' then
    redis.call('HSET', k.unique, a.unique_key, a.task_id)
    redis.call('HSET', k.task, 'uniq', k.unique, 'ukey', a.unique_key)
  end
  if tonumber(a.run_at) > 0 then
    redis.call('ZADD', k.delayed, a.run_at, a.task_id)
    return 1
  end
  if redis.call('RPUSH', k.waiting, a.task_id) == 1 then
    redis.call('RPUSH', k.ring, a.owner)  -- its first waiting task: the owner joins the ring
    stamp(k, a.owner)
  end
  t.wake = t.wake + 1
  return 1
end
