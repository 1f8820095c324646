-- A worker's commits and the events they publish: a part of both of the backend's scripts.
-- The whole script is queue.lua, taking.lua, this file and operations.lua, joined in that order;
-- the progress script (batches of `progress` rows only) is its settings, this file and
-- progress.lua (_scripts.py joins both). Row layouts and conventions: operations.lua's header.

-- A batch row's answer from its `pcall`: its own, or its error (a Lua error made an error
-- reply), so that a row's error is that row's answer and the others still run.
local function row_answer(ok, answer)
  if ok or (type(answer) == 'table' and answer.err) then
    return answer
  end
  return redis.error_reply(tostring(answer))
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

-- This Redis's time in whole seconds (its text: `now`) and `refresh` seconds later (`renew_at`:
-- when a commit that sets its identity's seq and history to expire asks to again, see
-- `commit`), read once per batch, by the first row that needs them.
local function clock(s)
  if not s.now then
    s.now = redis.call('TIME')[1]
    s.renew_at = string.format('%d', tonumber(s.now) + s.refresh)
  end
  return s.now
end

-- Whether the decimal text `a` is at least `b` (both whole and non-negative, without leading
-- zeros): by their lengths, then as strings. `tonumber` parses with strtod, twice, and a commit
-- compared three numbers.
local function at_least(a, b)
  local la, lb = #a, #b
  return la > lb or (la == lb and a >= b)
end

-- Save a task's new state and publish it to its owner in one step (and, for a `commit` row with
-- `finish`, acknowledge its stream entry): `save` and `publish` in five commands where the two
-- cost eleven (one read of the task's hash and one write, for the fencing and the staleness
-- check both). A fenced-out save publishes and acknowledges nothing.
-- The owner's seq and history are kept `expiry` seconds after the event (`emit`), but set to
-- expire only when this task has not done so for `refresh` seconds (the task's `renew`: when it
-- is to again), and at its end: each event is then kept at least `expiry - refresh` seconds
-- (the history_ttl) and at most `expiry`, for two commands an event fewer.
-- A row's `record` is the task's record (JSON, an object: stored as `data`) or, for a report
-- that changes nothing but the task's progress and message, only those with its revision (a
-- `tick`, JSON [revision, progress, message]: stored as `tick`, which readers lay over `data`
-- when it is newer; _common.py). The worker sends a tick when its lease stored the rest of the
-- record already: ~350 bytes fewer a report for Lua to hash and Redis to parse and store.
-- A row's `status` is '' when it is the task's stored one already (the worker sends it with an
-- attempt's first commit and when it changes): the fence then reads four fields, not five (the
-- cancel flag only with a status), and the write leaves it alone; a `commit` row always has it.
-- A `progress` row is a commit that neither ends the task nor acknowledges it (most of them):
-- its fields are the first of a `commit` row's, without the keys and values only an end (or
-- a cancel told again, rare) needs.
-- `at`: where the row's fields start in ARGV, less one (ROW: in a batch of the whole script, its
-- name is there); `ending` (a `commit` row's, which only the whole script runs): its keys
-- owner_tasks and waiting, else nil. `s`: the batch's settings and state (`clock`, `emit`; with
-- `ending`, also `tally` and `close`, operations.lua's: what a task's end frees).
-- Returns 0 when fenced out, else 1 (whether or not the event was dropped as stale): a number,
-- not a table, since Redis turns a table into its reply by asking it for half a dozen special
-- fields first (err, ok, double, map ...), several thousand instructions a row.
local function commit(s, at, task, seq_key, history_key, ending)
  local attempt, record, revision, status, event, channel = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4],
    ARGV[at + 5], ARGV[at + 6]
  local h
  if ending then  -- and what `ended` frees (read here, not by a command of its own)
    h = redis.call('HMGET', task, 'state', 'attempt', 'pub', 'renew', 'uniq', 'ukey')
  else
    h = redis.call('HMGET', task, 'state', 'attempt', 'pub', 'renew')
  end
  if h[1] ~= 'leased' or h[2] ~= attempt then
    return 0
  end
  -- this revision not published yet (a commit sent again after a lost answer may have been)
  local fresh = not h[3] or not at_least(h[3], revision)
  local terminal = ending and ARGV[at + 8] == '1'
  local keep = fresh and (terminal or not h[4] or at_least(clock(s), h[4]))
  local stored = 'data'
  if string.byte(record, 1) == 91 then  -- '[': a tick
    stored = 'tick'
  end
  if fresh and not terminal and not keep and status == '' then  -- a progress report, most of the time
    redis.call('HSET', task, stored, record, 'rev', revision, 'pub', revision)
  else
    local fields, n = {task, stored, record, 'rev', revision}, 5
    if status ~= '' then
      fields[n + 1] = 'status'
      fields[n + 2] = status
      n = n + 2
    end
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
      clock(s)  -- read already, unless `keep` was decided without it
      fields[n + 1] = 'renew'
      fields[n + 2] = s.renew_at
      n = n + 2
    end
    redis.call('HSET', unpack(fields, 1, n))
  end
  if terminal then
    s.close(s, at, task, ending, status, h)
  elseif status == 'running' and redis.call('HGET', task, 'cancel') == '1' then
    -- the attempt's first commit, and cancel was asked before it: tell its worker again (the
    -- task's id, from its key: a progress row leaves it out, 32 bytes fewer for Lua to hash on
    -- every report)
    redis.call(s.publish_command, s.cancel_channel, string.sub(task, #s.task_prefix + 1))
  end
  if fresh then
    emit(seq_key, history_key, event, s, keep, channel)
  end
  if ending and ARGV[at + 10] == '1' then  -- acknowledged with the batch's others (`settle`)
    s.tally.acks[#s.tally.acks + 1] = ARGV[at + 11]
  end
  return 1
end

