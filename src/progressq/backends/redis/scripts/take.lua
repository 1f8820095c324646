-- Take up to ARGV[3] waiting tasks for this consumer, fairly between owners, and claim them
-- (claim.lua for each), in one round trip. The body of claim.lua is prepended as the
-- function `claim(KEYS, ARGV)`.
--
-- Fairness: the ring lists the owners with waiting tasks. Each task taken comes from the
-- first owner in the ring below its cap of running tasks (counted across every worker),
-- who then goes to the back of the ring; an owner at its cap is passed over (to the back
-- too). So no owner takes a second turn while another one below its cap waits, and none
-- runs more than the cap. Each task taken is added to the stream and read at once by this
-- consumer: the stream's group then keeps its lease (heartbeat, takeover) as before.
--
-- A task's keys are its id or owner after a prefix (ARGV[4], ARGV[5]), only known once it is
-- read: this script names keys it was not passed, which a single Redis allows (the backend
-- does not support Redis Cluster).
-- Delayed tasks (a retry's backoff) whose time has come are first put in their owners'
-- lines, by whichever worker's take gets there first: each exactly once (the script is atomic).
--
-- KEYS: 1 stream, 2 counters, 3 ring of owners with waiting tasks, 4 running tasks per owner,
--       5 delayed tasks
-- ARGV: 1 group, 2 consumer, 3 count, 4 task key prefix, 5 waiting list key prefix,
--       6 most running tasks per owner (0: no limit)
-- Returns {entry id, claim.lua's answer} per task taken, in order (none: nothing could be).
local limit = tonumber(ARGV[3])
local cap = tonumber(ARGV[6])
local answers = {}

-- Read up to `count` entries new to the group for this consumer and claim each.
local function deliver(count)
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count, 'STREAMS', KEYS[1], '>')
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
      answers[#answers + 1] = {delivered[1],
        claim({ARGV[4] .. id, KEYS[1], KEYS[2], KEYS[4]}, {ARGV[1], ARGV[2], delivered[1], 'fresh'})}
    end
  end
end

local now = redis.call('TIME')
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000),
  'LIMIT', 0, 100)
for _, task in ipairs(due) do
  redis.call('ZREM', KEYS[5], task)
  local h = redis.call('HMGET', ARGV[4] .. task, 'state', 'owner')
  if h[1] == 'queued' then  -- else cancelled (or gone) meanwhile
    if redis.call('RPUSH', ARGV[5] .. h[2], task) == 1 then
      redis.call('RPUSH', KEYS[3], h[2])
    end
  end
end

local owners = redis.call('LLEN', KEYS[3])
if owners == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return answers
end
-- the group may be gone (Redis lost its data): make it, or reading below fails midway
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if owners == 0 then
  -- nothing waits in the ring; entries left unread (by an older version) are taken here
  deliver(limit)
  return answers
end
local passed = 0  -- owners passed over in a row, at their cap
local taken = 0
local added = {}  -- tasks taken per owner by this call, not yet counted as running
while taken < limit and owners > 0 and passed < owners do
  local owner = redis.call('LMOVE', KEYS[3], KEYS[3], 'LEFT', 'RIGHT')
  if cap > 0 and tonumber(redis.call('HGET', KEYS[4], owner) or '0') + (added[owner] or 0) >= cap then
    passed = passed + 1
  else
    local waiting = ARGV[5] .. owner
    local task = redis.call('LPOP', waiting)
    if redis.call('LLEN', waiting) == 0 then
      redis.call('RPOP', KEYS[3])  -- no task of its own left waiting: out of the ring
      owners = owners - 1
    end
    if task then
      passed = 0
      taken = taken + 1
      added[owner] = (added[owner] or 0) + 1
      local entry = redis.call('XADD', KEYS[1], '*', 't', task)
      redis.call('HSET', ARGV[4] .. task, 'entry', entry)
    end
  end
end
if taken > 0 then
  -- these entries, unless entries of an older version were left unread: each entry read is
  -- claimed (or dropped) by claim.lua; ours then by a later take
  deliver(taken)
end
return answers
