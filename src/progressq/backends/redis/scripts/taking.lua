-- The Redis queue's named operations (see operations.lua for how a named call binds its keys
-- and arguments): taking tasks fairly between owners, leases, releases, cancels. Defined only
-- when a named call runs: Redis runs the whole script on every call, and a batch, which needs
-- none of them, returns before operations.lua calls this (making their functions costs), and so
-- is every function only they use (`promote`, `claim`).
local function queue_operations(operations)
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

  -- An owner's count of running tasks taken back (`take` counted a task that does not run).
  -- keys: running
  local function uncount_running(k, owner)
    if redis.call('HINCRBY', k.running, owner, '-1') <= 0 then
      redis.call('HDEL', k.running, owner)
    end
  end

  -- Take a delivered (or reclaimed) stream entry for this consumer and bump the task's attempt.
  -- keys: task, stream, counters, running
  -- args: group, consumer, entry, fresh ('1' when the caller has just read the entry for this
  --       consumer: it is pending here, no XCLAIM needed; '2' when the caller has also just added
  --       it for the task: it is the task's entry, stored here), counted (the task's owner, when
  --       the caller has counted the task against the owner's cap already; absent: counted here)
  -- t: the call's tally (see `settle`)
  -- Returns {0} (nothing to run), {2, record, attempt, rev, cancel, pub} (already finished: its
  -- final state may still need publishing) or {1, record, attempt, rev, cancel, deliveries, tick}
  -- (tick: the task's last reported progress and message, absent if none; see `commit`).
  local function claim(k, a, t)
    if a.fresh ~= '1' and a.fresh ~= '2' and #redis.call('XCLAIM', k.stream, a.group, a.consumer, '0', a.entry,
      'JUSTID') == 0 then
      return {0}
    end
    local h = redis.call('HMGET', k.task, 'state', 'entry', 'attempt', 'rev', 'deliveries', 'data', 'cancel', 'pub',
      'owner', 'tick')
    local own = a.fresh == '2'
    if a.counted and h[1] ~= 'queued' then  -- it does not start running here after all
      uncount_running(k, a.counted)
    end
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
      if not a.counted then
        redis.call('HINCRBY', k.running, h[9], '1')  -- counted against its owner's cap until it ends
      end
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
    return {1, h[6], attempt, rev, tonumber(h[7]), deliveries, h[10]}
  end

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
    -- entry id -> owner, for the entries of `added` counted against their owner's cap already
    -- (where the cap was checked: `claim` is told, and the count of one left unclaimed is taken
    -- back below)
    local counted = {}

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
          local fresh, owner = '1', nil
          if added[delivered[1]] then
            fresh = '2'
            added[delivered[1]] = nil
            owner = counted[delivered[1]]
          end
          answers[#answers + 1] = {delivered[1],
            claim({task = a.task_prefix .. id, stream = k.stream, counters = k.counters, running = k.running},
              {group = a.group, consumer = a.consumer, entry = delivered[1], fresh = fresh, counted = owner}, t)}
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
    while taken < limit and owners > 0 and passed < owners do
      local owner = redis.call('LMOVE', k.ring, k.ring, 'LEFT', 'RIGHT')
      stamp(k, owner)
      -- under a cap, the task to take is counted against it at once: the count's new value is the
      -- check (one command where reading the count and then raising it in `claim` took two), and
      -- taken back when the owner is at its cap (or has no task waiting after all)
      if cap > 0 and redis.call('HINCRBY', k.running, owner, '1') > cap then
        uncount_running(k, owner)
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
          -- the task's hash learns its entry as `claim` takes it, below
          local entry = redis.call('XADD', k.stream, '*', 't', task)
          added[entry] = task
          if cap > 0 then
            counted[entry] = owner
          end
        elseif cap > 0 then
          uncount_running(k, owner)
        end
      end
    end
    if taken > 0 then
      -- these entries, unless entries of an older version were left unread: each entry read is
      -- claimed (or dropped) by `claim`; ours then by a later take
      deliver(taken)
      -- ours left unread behind older ones: a later take claims them, by the entry stored here,
      -- and counts them then
      for entry, task in pairs(added) do
        redis.call('HSET', a.task_prefix .. task, 'entry', entry)
        if counted[entry] then
          uncount_running(k, counted[entry])
        end
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
end
