-- The Redis backend's operations: one script, registered once. A call takes one of two forms
-- (both built in _calls.py):
--
-- Named, one operation per call:
--   ARGV[1]                 the operation's name (a function of `operations` below);
--   ARGV[2 .. #KEYS + 1]    the names of KEYS[1 ..], in order;
--   then name, value, name, value, ...: the arguments.
-- A list is named item by item: "task 1", "task 2", ...
-- An operation that combines others passes them the same named keys and arguments: each
-- argument is named after what it is, so that the parts agree (one `revision`, one `task_id`).
--
-- Batched, the calls of one shard made at the same moment (the worker's commits, the submits),
-- in one script call (see `batch` at the end):
--   ARGV[1] = 'batch', ARGV[2 .. 12] the shard's settings (SETTINGS below, the same for every
--   batch), then the rows one after the other: each its operation's name and its fields;
--   KEYS: the shard's own keys first (SHARD_KEYS below), then each row's keys in turn.
-- A row is positional: its layout is in ROWS below, and _calls.py builds rows from that same
-- table (_ROW_LAYOUTS, checked against this file by the tests). Each row runs atomically and
-- on its own: an error in one row is that row's answer, and the others still run.
--
-- Every call names the keys of one shard (one hash tag on Redis Cluster: one slot), and the keys
-- an operation names from what it reads (`take`) are of that shard too.
-- Publishing uses the optional argument publish_command: SPUBLISH on Redis Cluster (sharded
-- pub/sub), else PUBLISH.

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

-- Delayed tasks (a retry's backoff, a scheduled task) whose time has come go to their owners'
-- lines, by whichever worker's call gets there first: each exactly once (the call is atomic).
-- keys: delayed, ring, stamps (may be absent)
-- args: task_prefix, waiting_prefix
local function promote(k, a)
  local due = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', now_ms(), 'LIMIT', '0', '100')
  for _, task in ipairs(due) do
    redis.call('ZREM', k.delayed, task)
    local h = redis.call('HMGET', a.task_prefix .. task, 'state', 'owner')
    if h[1] == 'queued' then  -- else cancelled (or gone) meanwhile
      if redis.call('RPUSH', a.waiting_prefix .. h[2], task) == 1 then
        redis.call('RPUSH', k.ring, h[2])
        stamp(k, h[2])
      end
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

-- Store a task's state when the writer holds the current attempt (fencing).
-- keys: task, counters, owner_tasks, unfinished, running, waiting, wake, dead
-- args: attempt, record, revision, status, terminal ('0'/'1'), retention (s), cancel_channel,
--       task_id, owner
-- Returns 1 when stored, 0 when fenced out.
local function save(k, a)
  local h = redis.call('HMGET', k.task, 'state', 'attempt', 'cancel')
  if h[1] ~= 'leased' or h[2] ~= a.attempt then
    return 0
  end
  if a.terminal == '1' then
    redis.call('HSET', k.task, 'data', a.record, 'rev', a.revision, 'status', a.status, 'state', 'done')
    ended(k, a.retention, a.owner, a.task_id, a.status)
  else
    redis.call('HSET', k.task, 'data', a.record, 'rev', a.revision, 'status', a.status)
    if h[3] == '1' and a.status == 'running' then
      -- cancel was asked before this attempt started: tell its worker again
      redis.call(a.publish_command or 'PUBLISH', a.cancel_channel, a.task_id)
    end
  end
  return 1
end

-- Give an event the identity's next seq, keep it in the history and publish it, in one step,
-- so that publish order is seq order. A seq made afresh (the first event, or the seq expired)
-- starts a fresh history. `event` is the event after its seq, built by the caller:
-- "revision:kind:length of the task id:task id" and then the view (JSON). The message
-- published is "seq:" and the event, and the history keeps that message: a list in seq order,
-- trimmed to its last `history_size` entries once it holds `trim_above` (a tenth more), so that
-- trimming is one command in a hundred events, not one an event.
-- The seq and the history are set to expire `expiry` seconds on when `keep` asks it, and
-- always when either is made afresh (see `commit` for when a commit asks it).
-- settings (`s`): history_size, trim_above (a number), expiry, publish_command
-- Returns the seq.
local function emit(seq_key, history_key, event, s, keep, channel)
  local seq = redis.call('INCR', seq_key)
  if seq == 1 then
    redis.call('DEL', history_key)
    keep = true
  end
  local message = string.format('%d', seq) .. ':' .. event  -- not tostring: its '%.14g' costs more
  local kept = redis.call('RPUSH', history_key, message)
  if kept > s.trim_above then
    redis.call('LTRIM', history_key, '-' .. s.history_size, '-1')
  end
  -- a history made just now (it expired a moment before its seq) must expire too
  if keep or kept == 1 then
    redis.call('EXPIRE', seq_key, s.expiry)
    redis.call('EXPIRE', history_key, s.expiry)
  end
  redis.call(s.publish_command or 'PUBLISH', channel, message)
  return seq
end

-- The settings `emit` takes, from a named call's arguments.
local function history_settings(a)
  local size = tonumber(a.history_size)
  return {history_size = a.history_size, trim_above = size + math.max(1, math.floor(size / 10)), expiry = a.ttl,
    publish_command = a.publish_command}
end

-- Publish an event (`emit`), unless it is about a task that has moved on (a newer revision
-- is stored, or this revision was already published): that is what keeps a worker that lost
-- its lease from reaching a client, and a retried publish from repeating.
-- keys: seq, history, task (may not exist)
-- args: revision, event (see `emit`), history_size, ttl (s: the seq's and history's expiry), channel
-- Returns the seq, or 0 when dropped.
local function publish(k, a)
  local rev = tonumber(a.revision)
  if redis.call('EXISTS', k.task) == 1 then
    local h = redis.call('HMGET', k.task, 'rev', 'pub')
    if tonumber(h[1] or '0') > rev or tonumber(h[2] or '0') >= rev then
      return 0
    end
    redis.call('HSET', k.task, 'pub', a.revision)
  end
  return emit(k.seq, k.history, a.event, history_settings(a), true, a.channel)
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
--       announced; absent: none), kept (when the announcement set the owner's seq and history
--       to expire, see `commit`; absent: none), unfinished (the owner's count of unfinished
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
  if a.kept then
    redis.call('HSET', k.task, 'data', a.record, 'owner', a.owner, 'rev', a.revision, 'attempt', '0',
      'state', 'queued', 'entry', '', 'deliveries', '0', 'cancel', '0', 'pub', a.pub or '0', 'kept', a.kept)
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

-- Take a delivered (or reclaimed) stream entry for this consumer and bump the task's attempt.
-- keys: task, stream, counters, running
-- args: group, consumer, entry, fresh ('1' when the caller has just read the entry for this
--       consumer: it is pending here, no XCLAIM needed; '2' when the caller has also just added
--       it for the task: it is the task's entry, stored here)
-- t: the call's tally (see `settle`)
-- Returns {0} (nothing to run), {2, record, attempt, rev, cancel, pub} (already finished: its
-- final state may still need publishing) or {1, record, attempt, rev, cancel, deliveries}.
local function claim(k, a, t)
  if a.fresh ~= '1' and a.fresh ~= '2' and #redis.call('XCLAIM', k.stream, a.group, a.consumer, '0', a.entry,
    'JUSTID') == 0 then
    return {0}
  end
  local h = redis.call('HMGET', k.task, 'state', 'entry', 'attempt', 'rev', 'deliveries', 'data', 'cancel', 'pub',
    'owner')
  local own = a.fresh == '2'
  if not h[1] or (h[2] ~= a.entry and not own) then
    -- the task expired, or this entry is not its current one
    redis.call('XACK', k.stream, a.group, a.entry)
    redis.call('XDEL', k.stream, a.entry)
    return {0}
  end
  if h[1] == 'done' then
    redis.call('XACK', k.stream, a.group, a.entry)
    redis.call('XDEL', k.stream, a.entry)
    return {2, h[6], tonumber(h[3]), tonumber(h[4]), tonumber(h[7]), tonumber(h[8])}
  end
  if h[1] == 'queued' then
    t.queued = t.queued - 1
    t.running = t.running + 1
    redis.call('HINCRBY', k.running, h[9], '1')  -- counted against its owner's cap until it ends
  end
  local attempt = tonumber(h[3]) + 1
  local rev = tonumber(h[4]) + 1
  local deliveries = tonumber(h[5]) + 1
  if own then  -- (one write of the task's hash, where the entry was set by `take` before)
    redis.call('HSET', k.task, 'state', 'leased', 'attempt', decimal(attempt), 'rev', decimal(rev), 'deliveries',
      decimal(deliveries), 'entry', a.entry)
  else
    redis.call('HSET', k.task, 'state', 'leased', 'attempt', decimal(attempt), 'rev', decimal(rev), 'deliveries',
      decimal(deliveries))
  end
  return {1, h[6], attempt, rev, tonumber(h[7]), deliveries}
end

-- --- Batched calls ---------------------------------------------------------------------

-- The shard's own keys, KEYS[1 ..] of every batch, in this order (_calls.py: _SHARD_KEYS).
-- SHARD_KEYS: counters unfinished running wake dead stream ring delayed stamps

-- The shard's settings, ARGV[2 ..] of every batch, in this order (_calls.py: _SETTINGS).
-- SETTINGS: capacity retention history_size trim_above expiry refresh group cancel_channel publish_command stamps task_prefix

-- Each row's fields, in order: its name, its keys (taken from KEYS in turn: the operation gets
-- the index of the first), then its other fields (from ARGV in turn: r[2], r[3] ...). _calls.py
-- builds the rows from the same lists (_ROW_LAYOUTS), and a test checks that the two agree.
-- ROW commit: op task owner_tasks waiting seq history attempt record revision status task_id event channel terminal owner finish entry
-- ROW progress: op task seq history attempt record revision status task_id event channel
-- ROW submit: op task owner_tasks waiting unique seq history task_id record owner created revision run_at unique_key limit event channel
-- ROW enqueue: op task owner_tasks waiting unique seq history task_id record owner created revision run_at unique_key limit event channel
-- Every field is a string, as ARGV holds them: a flag is '1' or '' (both true in Lua: compare),
-- a number its decimal text (a Lua number handed to Redis is formatted with snprintf, dearer
-- than the command itself). The rows and settings travel as plain arguments, not as one encoded
-- string: Redis's Lua hashes every byte of every string it makes, so an encoded batch cost its
-- length once more, and its decoding a table insertion per field.

local batched = {}

-- The time of this Redis in whole seconds (its text, its number), read once per batch.
local function now(s)
  if not s.now then
    s.now_text = redis.call('TIME')[1]
    s.now = tonumber(s.now_text)
  end
  return s.now
end

-- Save a task's new state and publish it to its owner in one step (and, for a `commit` row with
-- `finish`, acknowledge its stream entry): `save` and `publish` in five commands where the two
-- cost eleven (one read of the task's hash and one write, for the fencing and the staleness
-- check both). A fenced-out save publishes and acknowledges nothing.
-- The owner's seq and history are kept `expiry` seconds after the event (`emit`), but set to
-- expire only when this task has not done so for `refresh` seconds (the task's `kept`: when it
-- last did), and at its end: each event is then kept at least `expiry - refresh` seconds (the
-- history_ttl) and at most `expiry`, for two commands an event fewer.
-- A `progress` row is a commit that neither ends the task nor acknowledges it (most of them):
-- its fields are the first of a `commit` row's, without the keys and values only an end needs.
-- `ending` (a `commit` row's): its keys owner_tasks and waiting, else nil.
-- Returns {0, 0} when fenced out, else {1, seq} (seq 0: the event was dropped as stale).
local function commit(shard, s, r, task, seq_key, history_key, ending)
  local revision, status, task_id = r[4], r[5], r[6]
  local h
  if ending then  -- and what `ended` frees (read here, not by a command of its own)
    h = redis.call('HMGET', task, 'state', 'attempt', 'cancel', 'pub', 'kept', 'uniq', 'ukey')
  else
    h = redis.call('HMGET', task, 'state', 'attempt', 'cancel', 'pub', 'kept')
  end
  if h[1] ~= 'leased' or h[2] ~= r[2] then
    return {0, 0}
  end
  -- this revision not published yet (a commit sent again after a lost answer may have been)
  local fresh = tonumber(h[4] or '0') < tonumber(revision)
  local terminal = ending and r[9] == '1'
  local keep = fresh and (terminal or not h[5] or now(s) >= tonumber(h[5]) + s.refresh)
  if fresh and not terminal and not keep then  -- a progress report, most of the time
    redis.call('HSET', task, 'data', r[3], 'rev', revision, 'status', status, 'pub', revision)
  else
    local fields, n = {task, 'data', r[3], 'rev', revision, 'status', status}, 7
    if terminal then
      fields[n + 1] = 'state'
      fields[n + 2] = 'done'
      n = n + 2
    end
    if fresh then
      fields[n + 1] = 'pub'
      fields[n + 2] = revision
      n = n + 2
    end
    if keep then
      now(s)  -- read already, unless `keep` was decided without it
      fields[n + 1] = 'kept'
      fields[n + 2] = s.now_text
      n = n + 2
    end
    redis.call('HSET', unpack(fields, 1, n))
  end
  if terminal then
    ended({task = task, counters = shard.counters, owner_tasks = ending.owner_tasks, unfinished = shard.unfinished,
      running = shard.running, waiting = ending.waiting, wake = shard.wake, dead = shard.dead},
      s.retention, r[10], task_id, status, s.tally, {h[6], h[7]})
  elseif h[3] == '1' and status == 'running' then
    -- cancel was asked before this attempt started: tell its worker again
    redis.call(s.publish_command, s.cancel_channel, task_id)
  end
  local seq = 0
  if fresh then
    seq = emit(seq_key, history_key, r[7], s, keep, r[8])
  end
  if ending and r[11] == '1' then  -- acknowledged with the batch's others (`settle`)
    s.tally.acks[#s.tally.acks + 1] = r[12]
  end
  return {1, seq}
end

function batched.progress(shard, s, r, key)
  return commit(shard, s, r, KEYS[key], KEYS[key + 1], KEYS[key + 2], nil)
end

function batched.commit(shard, s, r, key)
  return commit(shard, s, r, KEYS[key], KEYS[key + 3], KEYS[key + 4],
    {owner_tasks = KEYS[key + 1], waiting = KEYS[key + 2]})
end

-- A submit's or an enqueue's row, as `enqueue`'s named keys and arguments.
local function new_task(shard, s, r, key)
  local k = {task = KEYS[key], owner_tasks = KEYS[key + 1], waiting = KEYS[key + 2], unique = KEYS[key + 3],
    seq = KEYS[key + 4], history = KEYS[key + 5], counters = shard.counters, unfinished = shard.unfinished,
    ring = shard.ring, wake = shard.wake, delayed = shard.delayed, stamps = shard.stamps}
  local a = {task_id = r[2], record = r[3], owner = r[4], created = r[5], revision = r[6], run_at = r[7],
    unique_key = r[8], capacity = s.capacity, retention = s.retention, task_prefix = s.task_prefix}
  return k, a
end

-- `enqueue`, unless the owner has an unfinished task with the new task's unique key.
-- Returns {1} when queued, {0} when the queue is full, {-1} when the id is taken, {-3, task id}
-- when the owner's unfinished task of that id has the key (nothing queued).
function batched.enqueue(shard, s, r, key)
  local k, a = new_task(shard, s, r, key)
  local holder = key_holder(k, a)
  if holder then
    return {-3, holder}
  end
  return {enqueue(k, a, s.tally)}
end

-- Store and queue a new task (`enqueue`) and announce it (`emit`, `taskQueued`) in one step,
-- unless its owner already has the most unfinished tasks allowed (`limit`, 0: none), or an
-- unfinished task with its unique key (checked first: a submit answered with that task adds
-- none). The task is new: its announcement is noted as published as it is stored.
-- Returns {1, seq} when queued, {0} when the queue is full, {-1} when the id is taken,
-- {-2, unfinished} when the owner is at its limit, {-3, task id} when the owner's unfinished
-- task of that id has the key (nothing queued either way).
function batched.submit(shard, s, r, key)
  local k, a = new_task(shard, s, r, key)
  local holder = key_holder(k, a)
  if holder then
    return {-3, holder}
  end
  local limit = tonumber(r[9])
  if limit > 0 then
    -- counted at once (`enqueue` is told), and taken back when refused: one command, not two
    a.unfinished = redis.call('HINCRBY', k.unfinished, a.owner, '1')
    if a.unfinished > limit then
      uncount_unfinished(k, a.owner)
      return {-2, a.unfinished - 1}
    end
  end
  if tonumber(a.revision) > 0 then  -- else `publish` would drop it (revision 0 is never newer)
    a.pub = a.revision
    now(s)
    a.kept = s.now_text  -- its announcement (`emit` below) sets the seq and history to expire
  end
  local done = enqueue(k, a, s.tally)
  if done ~= 1 then
    if a.unfinished then
      uncount_unfinished(k, a.owner)
    end
    return {done}
  end
  if not a.pub then
    return {1, 0}
  end
  return {1, emit(k.seq, k.history, r[10], s, true, r[11])}
end

-- Each batched operation's number of keys and of other fields (its ROW line: keys first).
local ROW_SIZES = {commit = {5, 11}, progress = {3, 7}, submit = {6, 10}, enqueue = {6, 10}}

-- The rows of a batch, each run on its own: an error (a key of the wrong type, say) is that
-- row's answer, an error reply among the others' answers.
local function batch()
  local s = {capacity = ARGV[2], retention = ARGV[3], history_size = ARGV[4], trim_above = tonumber(ARGV[5]),
    expiry = ARGV[6], refresh = tonumber(ARGV[7]), group = ARGV[8], cancel_channel = ARGV[9],
    publish_command = ARGV[10], stamps = ARGV[11] == '1', task_prefix = ARGV[12], tally = tally()}
  local shard = {counters = KEYS[1], unfinished = KEYS[2], running = KEYS[3], wake = KEYS[4], dead = KEYS[5],
    stream = KEYS[6], ring = KEYS[7], delayed = KEYS[8]}
  if s.stamps then
    shard.stamps = KEYS[9]
  end
  local answers = {}
  local at, key, n = 13, 10, #ARGV  -- the next row's name in ARGV, its first key in KEYS
  while at <= n do
    local op = ARGV[at]
    local size = ROW_SIZES[op]
    if not size then
      -- where the next row starts is unknown: the call fails (_calls.py sends no such row)
      settle(shard, s.tally, s.group)  -- the rows before it ran
      return redis.error_reply('progressq: no batched operation ' .. tostring(op))
    end
    -- the row: its name and fields (r[1], r[2] ...), made at once; its keys from KEYS[key]
    local ok, answer = pcall(batched[op], shard, s, {unpack(ARGV, at, at + size[2])}, key)
    if ok then
      answers[#answers + 1] = answer
    elseif type(answer) == 'table' and answer.err then
      answers[#answers + 1] = answer
    else
      answers[#answers + 1] = redis.error_reply(tostring(answer))
    end
    at = at + 1 + size[2]
    key = key + size[1]
  end
  settle(shard, s.tally, s.group)
  return answers
end

-- A batch is run here, before the named operations below are defined: Redis runs the whole
-- script on every call, and making their functions and their table cost each batch about 18,000
-- instructions (a tenth of a batch of one row).
if ARGV[1] == 'batch' then
  return batch()
end

-- --- Named calls ----------------------------------------------------------------------

local operations = {}

operations.save = save
operations.publish = publish

-- Store a task's state (queued) and queue it again, if the writer holds the current attempt:
-- first in its owner's waiting list (it had its turn already), or, when it is to run later (a
-- retry's backoff), in the delayed set that `take` promotes from.
-- keys: task, stream, counters, running, waiting, ring, wake, delayed
-- args: attempt, record, revision, group, task_id, owner, run_at (ms since the epoch; '0': now)
-- Returns 1 when queued again, 0 when fenced out.
function operations.release(k, a)
  local h = redis.call('HMGET', k.task, 'state', 'attempt', 'entry')
  if h[1] ~= 'leased' or h[2] ~= a.attempt then
    return 0
  end
  redis.call('XACK', k.stream, a.group, h[3])
  redis.call('XDEL', k.stream, h[3])
  redis.call('HSET', k.task, 'data', a.record, 'rev', a.revision, 'status', 'queued', 'state', 'queued',
    'entry', '', 'deliveries', 0)
  redis.call('HINCRBY', k.counters, 'running', -1)
  redis.call('HINCRBY', k.counters, 'queued', 1)
  if redis.call('HINCRBY', k.running, a.owner, -1) <= 0 then
    redis.call('HDEL', k.running, a.owner)
  end
  local now = redis.call('TIME')
  if tonumber(a.run_at) > tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    redis.call('ZADD', k.delayed, a.run_at, a.task_id)
    return 1
  end
  if redis.call('LPUSH', k.waiting, a.task_id) == 1 then
    redis.call('RPUSH', k.ring, a.owner)
    stamp(k, a.owner)
  end
  redis.call('LPUSH', k.wake, 1)
  redis.call('LTRIM', k.wake, 0, 63)
  return 1
end

-- Acknowledge a task's stream entry, if the caller's attempt is still the task's current one.
-- keys: task, stream
-- args: attempt, group, entry
function operations.finish(k, a)
  if redis.call('HGET', k.task, 'attempt') ~= a.attempt then
    return 0
  end
  redis.call('XACK', k.stream, a.group, a.entry)
  redis.call('XDEL', k.stream, a.entry)
  return 1
end

-- Heartbeat: reset the idle time of a held lease so that no one reclaims it.
-- keys: task, stream
-- args: attempt, group, consumer, entry
-- Returns 0 when the lease is lost, 1 when extended, 2 when extended and cancel was asked.
function operations.extend(k, a)
  local h = redis.call('HMGET', k.task, 'state', 'attempt', 'cancel')
  if h[1] ~= 'leased' or h[2] ~= a.attempt then
    return 0
  end
  local claimed = redis.call('XCLAIM', k.stream, a.group, a.consumer, 0, a.entry, 'JUSTID')
  if #claimed == 0 then
    return 0
  end
  if h[3] == '1' then
    return 2
  end
  return 1
end

-- Cancel a task for its owner: a queued one becomes cancelled (and leaves its owner's waiting
-- list), a leased one is flagged and its worker told.
-- keys: task, counters, owner_tasks, unfinished, waiting, ring, delayed
-- args: owner, expected_revision, record (the cancelled one), revision (its), retention (s),
--       cancel_channel, task_id
-- Returns 0 not theirs, 1 cancelled, 2 requested, 3 already finished, 4 changed meanwhile.
function operations.cancel(k, a)
  local h = redis.call('HMGET', k.task, 'owner', 'state', 'rev')
  if h[1] ~= a.owner then
    return 0
  end
  if h[2] == 'done' then
    return 3
  end
  if h[2] == 'leased' then
    redis.call('HSET', k.task, 'cancel', 1)
    redis.call(a.publish_command or 'PUBLISH', a.cancel_channel, a.task_id)
    return 2
  end
  if h[3] ~= a.expected_revision then
    return 4
  end
  redis.call('HSET', k.task, 'data', a.record, 'rev', a.revision, 'status', 'cancelled', 'state', 'done', 'cancel', 1)
  redis.call('HINCRBY', k.counters, 'queued', -1)
  redis.call('EXPIRE', k.task, a.retention)
  if redis.call('HINCRBY', k.unfinished, a.owner, -1) <= 0 then
    redis.call('HDEL', k.unfinished, a.owner)
    redis.call('EXPIRE', k.owner_tasks, a.retention)
  end
  if redis.call('LREM', k.waiting, 1, a.task_id) == 1 and redis.call('LLEN', k.waiting) == 0 then
    redis.call('LREM', k.ring, 0, a.owner)
    unstamp(k, a.owner)
  end
  free_key(k, a)
  redis.call('ZREM', k.delayed, a.task_id)
  return 1
end

-- Claim several reclaimed stream entries at once: `claim` for each, in one round trip.
-- keys: stream, counters, running, "task 1" .. "task <count>" (each entry's task)
-- args: group, consumer, count, "entry 1" .. "entry <count>" (in the order of the tasks)
-- Returns one `claim` answer per entry, in order.
function operations.claim_many(k, a)
  local answers, t = {}, tally()
  for i = 1, tonumber(a.count) do
    answers[i] = claim({task = k['task ' .. i], stream = k.stream, counters = k.counters, running = k.running},
      {group = a.group, consumer = a.consumer, entry = a['entry ' .. i]}, t)
  end
  settle(k, t, a.group)
  return answers
end

-- Take up to `count` waiting tasks for this consumer, fairly between owners, and claim them
-- (`claim` for each), in one round trip.
--
-- Fairness: the ring lists the owners with waiting tasks. Each task taken comes from the first
-- owner in the ring below its cap of running tasks (counted across every worker), who then goes
-- to the back of the ring; an owner at its cap is passed over (to the back too). So no owner
-- takes a second turn while another one below its cap waits, and none runs more than the cap.
-- Each task taken is added to the stream and read at once by this consumer: the stream's group
-- then keeps its lease (heartbeat, takeover).
--
-- A task's keys are its id or owner after a prefix (task_prefix, waiting_prefix), only known
-- once it is read: this operation names keys it was not passed. Redis Cluster allows that for
-- keys of the slot of those passed, which they are: a shard's keys all carry its hash tag.
-- Delayed tasks whose time has come are first put in their owners' lines (`promote`).
--
-- keys: stream, counters, ring, running, delayed, stamps (with several shards)
-- args: group, consumer, count, task_prefix, waiting_prefix, cap (most running tasks per owner;
--       '0': no limit)
-- Returns {entry id, claim's answer} per task taken, in order (none: nothing could be).
function operations.take(k, a)
  local limit = tonumber(a.count)
  local cap = tonumber(a.cap)
  local answers = {}
  local t = tally()

  local added = {}  -- entry id -> task id: the entries this call added, not claimed yet

  -- Read up to `count` entries new to the group for this consumer and claim each.
  local function deliver(count)
    local read = redis.call('XREADGROUP', 'GROUP', a.group, a.consumer, 'COUNT', decimal(count), 'STREAMS', k.stream,
      '>')
    if not read then
      return
    end
    for _, delivered in ipairs(read[1][2]) do
      local fields = delivered[2]
      local id = nil
      for i = 1, #fields, 2 do
        if fields[i] == 't' then
          id = fields[i + 1]
        end
      end
      if id then
        local fresh = '1'
        if added[delivered[1]] then
          fresh = '2'
          added[delivered[1]] = nil
        end
        answers[#answers + 1] = {delivered[1],
          claim({task = a.task_prefix .. id, stream = k.stream, counters = k.counters, running = k.running},
            {group = a.group, consumer = a.consumer, entry = delivered[1], fresh = fresh}, t)}
      end
    end
  end

  promote(k, a)

  local owners = redis.call('LLEN', k.ring)
  if redis.call('EXISTS', k.stream) == 0 then
    if owners == 0 then
      return answers
    end
    -- the stream and its group are gone (Redis lost its data): make them, or reading below
    -- fails midway. (Only this script adds to the stream, after the group is made: while the
    -- stream exists, so does its group; asking for it on every take cost an error reply.)
    redis.pcall('XGROUP', 'CREATE', k.stream, a.group, '0', 'MKSTREAM')
  end
  if owners == 0 then
    -- nothing waits in the ring; entries left unread (by an older version) are taken here
    deliver(limit)
    settle(k, t, a.group)
    return answers
  end
  local passed = 0  -- owners passed over in a row, at their cap
  local taken = 0
  local taken_by = {}  -- tasks taken per owner by this call, not yet counted as running
  while taken < limit and owners > 0 and passed < owners do
    local owner = redis.call('LMOVE', k.ring, k.ring, 'LEFT', 'RIGHT')
    stamp(k, owner)
    if cap > 0 and tonumber(redis.call('HGET', k.running, owner) or '0') + (taken_by[owner] or 0) >= cap then
      passed = passed + 1
    else
      local waiting = a.waiting_prefix .. owner
      local task = redis.call('LPOP', waiting)
      if redis.call('LLEN', waiting) == 0 then
        redis.call('RPOP', k.ring)  -- no task of its own left waiting: out of the ring
        unstamp(k, owner)
        owners = owners - 1
      end
      if task then
        passed = 0
        taken = taken + 1
        taken_by[owner] = (taken_by[owner] or 0) + 1
        -- the task's hash learns its entry as `claim` takes it, below
        added[redis.call('XADD', k.stream, '*', 't', task)] = task
      end
    end
  end
  if taken > 0 then
    -- these entries, unless entries of an older version were left unread: each entry read is
    -- claimed (or dropped) by `claim`; ours then by a later take
    deliver(taken)
    -- ours left unread behind older ones: a later take claims them, by the entry stored here
    for entry, task in pairs(added) do
      redis.call('HSET', a.task_prefix .. task, 'entry', entry)
    end
  end
  settle(k, t, a.group)
  return answers
end

-- The owners a `take` of this shard would serve now, in its turn order (at most `count`): each
-- with when it went to the back of the ring (its stamp) and how many tasks it could take now
-- (waiting, and below its cap). With several shards, workers ask every shard and take from
-- those whose owners' stamps are oldest: turns go round the owners of every shard as they go
-- round one ring. Delayed tasks whose time has come are put in line first (`promote`).
-- keys: ring, running, delayed, stamps
-- args: task_prefix, waiting_prefix, cap ('0': none), count
-- Returns {owner, stamp, turns} per owner, in turn order.
function operations.due(k, a)
  promote(k, a)
  local cap = tonumber(a.cap)
  local count = tonumber(a.count)
  local found = {}
  local start = 0
  while #found < count do
    local owners = redis.call('LRANGE', k.ring, start, start + 99)
    if #owners == 0 then
      break
    end
    for _, owner in ipairs(owners) do
      local turns = redis.call('LLEN', a.waiting_prefix .. owner)
      if cap > 0 then
        turns = math.min(turns, cap - tonumber(redis.call('HGET', k.running, owner) or '0'))
      end
      if turns > 0 then
        found[#found + 1] = {owner, redis.call('HGET', k.stamps, owner) or '0', math.min(turns, count)}
        if #found >= count then
          break
        end
      end
    end
    start = start + 100
  end
  return found
end

-- The identity's seq, and the events after `seq` that its history holds, oldest first (each as
-- published: see `emit`), read together: the history is in seq order without gaps, so where an
-- event lies follows from the seq of its first.
-- keys: seq, history
-- args: seq
-- Returns {seq, {message, ...}}.
function operations.after(k, a)
  local current = redis.call('GET', k.seq) or '0'
  local from = tonumber(a.seq)
  if from >= tonumber(current) then
    return {current, {}}
  end
  local first = redis.call('LINDEX', k.history, 0)
  if not first then
    return {current, {}}
  end
  local start = math.max(0, from + 1 - tonumber(string.match(first, '^%d+')))
  return {current, redis.call('LRANGE', k.history, start, -1)}
end

-- Remove consumers of the workers' group that hold no entry: this process's own (when it
-- leaves) and any other idle for longer than the bound (a worker that died). A consumer with
-- pending entries is kept: removing it would lose them before they are reclaimed. One removed
-- while alive and idle costs nothing: its next read makes it again.
-- keys: stream
-- args: group, leaving (this process's consumer; '' for none), idle_ms (the bound)
-- Returns the number of consumers removed.
function operations.prune(k, a)
  if redis.call('EXISTS', k.stream) == 0 then
    return 0
  end
  local consumers = redis.pcall('XINFO', 'CONSUMERS', k.stream, a.group)
  if consumers.err then
    return 0  -- no group (yet)
  end
  local bound = tonumber(a.idle_ms)
  local removed = 0
  for _, consumer in ipairs(consumers) do
    local name, pending, idle = nil, 0, 0
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then
        name = consumer[i + 1]
      elseif consumer[i] == 'pending' then
        pending = tonumber(consumer[i + 1])
      elseif consumer[i] == 'idle' then
        idle = tonumber(consumer[i + 1])
      end
    end
    if name and pending == 0 and (name == a.leaving or idle > bound) then
      redis.call('XGROUP', 'DELCONSUMER', k.stream, a.group, name)
      removed = removed + 1
    end
  end
  return removed
end

-- The call: one named operation (bind each name to its value, and run it).
local k, a = {}, {}
for i = 1, #KEYS do
  k[ARGV[i + 1]] = KEYS[i]
end
for i = #KEYS + 2, #ARGV, 2 do
  a[ARGV[i]] = ARGV[i + 1]
end
local operation = operations[ARGV[1]]
if not operation then
  return redis.error_reply('progressq: no operation ' .. tostring(ARGV[1]))
end
return operation(k, a)
