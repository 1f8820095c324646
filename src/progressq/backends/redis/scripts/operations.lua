-- The Redis backend's operations: one script, registered once, made of queue.lua, taking.lua,
-- commits.lua and this file, joined in that order (_scripts.py). A call takes one of two forms
-- (both built in _calls.py); a batch of `progress` rows only goes to a script of its own
-- instead, the progress script (progress.lua), which reads the same rows without their names.
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

-- --- Batched calls ---------------------------------------------------------------------

-- The shard's own keys, KEYS[1 ..] of every batch, in this order (_calls.py: _SHARD_KEYS).
-- SHARD_KEYS: counters unfinished running wake dead stream ring delayed stamps

-- The shard's settings, ARGV[2 ..] of every batch, in this order (_calls.py: _SETTINGS).
-- SETTINGS: capacity retention history_size trim_above expiry refresh group cancel_channel publish_command stamps task_prefix

-- Each row's fields, in order: its name, its keys (taken from KEYS in turn: the operation gets
-- the index of the first), then its other fields (from ARGV in turn: r[2], r[3] ...). _calls.py
-- builds the rows from the same lists (_ROW_LAYOUTS), and a test checks that the two agree.
-- ROW commit: op task owner_tasks waiting seq history attempt record revision status event channel task_id terminal owner finish entry
-- ROW progress: op task seq history attempt record revision status event channel
-- ROW submit: op task owner_tasks waiting unique seq history task_id record owner created revision run_at unique_key limit event channel
-- ROW enqueue: op task owner_tasks waiting unique seq history task_id record owner created revision run_at unique_key limit event channel
-- Every field is a string, as ARGV holds them: a flag is '1' or '' (both true in Lua: compare),
-- a number its decimal text (a Lua number handed to Redis is formatted with snprintf, dearer
-- than the command itself). The rows and settings travel as plain arguments, not as one encoded
-- string: Redis's Lua hashes every byte of every string it makes, so an encoded batch cost its
-- length once more, and its decoding a table insertion per field.

-- (made with its four names, so that defining them does not grow it three times over)
local batched = {progress = false, commit = false, submit = false, enqueue = false}

function batched.progress(shard, s, at, key)
  return commit(s, at, KEYS[key], KEYS[key + 1], KEYS[key + 2], nil)
end

function batched.commit(shard, s, at, key)
  return commit(s, at, KEYS[key], KEYS[key + 3], KEYS[key + 4], {owner_tasks = KEYS[key + 1], waiting = KEYS[key + 2]})
end

-- A `commit` row ended its task (`commit`, commits.lua): what `ended` frees. `h`: the fence's
-- read, its fifth and sixth fields the task's uniq and ukey.
local function close(s, at, task, ending, status, h)
  local shard = s.shard
  ended({task = task, counters = shard.counters, owner_tasks = ending.owner_tasks, unfinished = shard.unfinished,
    running = shard.running, waiting = ending.waiting, wake = shard.wake, dead = shard.dead},
    s.retention, ARGV[at + 9], ARGV[at + 7], status, s.tally, {h[5], h[6]})
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
    clock(s)
    a.renew = s.renew_at  -- its announcement (`emit` below) sets the seq and history to expire
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
-- (Two flat tables, not one of pairs: Redis runs the whole script on every call, and each table
-- made costs ~1,000 instructions with the garbage collector's share.)
local ROW_KEYS = {commit = 5, progress = 3, submit = 6, enqueue = 6}
local ROW_FIELDS = {commit = 11, progress = 6, submit = 10, enqueue = 10}

-- The rows of a batch, each run on its own: an error (a key of the wrong type, say) is that
-- row's answer, an error reply among the others' answers.
local function batch()
  local shard = {counters = KEYS[1], unfinished = KEYS[2], running = KEYS[3], wake = KEYS[4], dead = KEYS[5],
    stream = KEYS[6], ring = KEYS[7], delayed = KEYS[8]}
  local s = {capacity = ARGV[2], retention = ARGV[3], history_size = ARGV[4], trim_above = tonumber(ARGV[5]),
    expiry = ARGV[6], refresh = tonumber(ARGV[7]), group = ARGV[8], cancel_channel = ARGV[9],
    publish_command = ARGV[10], stamps = ARGV[11] == '1', task_prefix = ARGV[12], tally = tally(), shard = shard,
    close = close}
  if s.stamps then
    shard.stamps = KEYS[9]
  end
  local answers = {}
  local at, key, n = 13, 10, #ARGV  -- the next row's name in ARGV, its first key in KEYS
  while at <= n do
    local op = ARGV[at]
    local fields = ROW_FIELDS[op]
    if not fields then
      -- where the next row starts is unknown: the call fails (_calls.py sends no such row)
      settle(shard, s.tally, s.group)  -- the rows before it ran
      return redis.error_reply('progressq: no batched operation ' .. tostring(op))
    end
    -- the row: its name and fields (r[1], r[2] ...), made at once; its keys from KEYS[key]. A
    -- commit's row (most rows) is read where it lies in ARGV instead, from `at`: a table for
    -- each cost ~1,500 instructions
    local row = at
    if op ~= 'progress' and op ~= 'commit' then
      row = {unpack(ARGV, at, at + fields)}
    end
    answers[#answers + 1] = row_answer(pcall(batched[op], shard, s, row, key))
    at = at + 1 + fields
    key = key + ROW_KEYS[op]
  end
  settle(shard, s.tally, s.group)
  return answers
end

-- A batch is run here, before the named operations below are defined: Redis runs the whole
-- script on every call, and making their functions and their table cost each batch about 18,000
-- instructions (a tenth of a batch of one row). So is every function only they use (`save`,
-- `publish`): each function or table the script makes costs a call ~1,000 instructions with the
-- garbage collector's share, a batch of no rows ~77,000 all told, ~39,000 of them the call's own.
if ARGV[1] == 'batch' then
  return batch()
end

-- --- Named calls ----------------------------------------------------------------------

local operations = {}

-- Store a task's state when the writer holds the current attempt (fencing).
-- keys: task, counters, owner_tasks, unfinished, running, waiting, wake, dead
-- args: attempt, record, revision, status, terminal ('0'/'1'), retention (s), cancel_channel,
--       task_id, owner
-- Returns 1 when stored, 0 when fenced out.
function operations.save(k, a)
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
function operations.publish(k, a)
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

-- The queue's named operations (scripts/taking.lua).
queue_operations(operations)

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
