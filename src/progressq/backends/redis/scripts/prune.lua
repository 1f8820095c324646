-- Remove consumers of the workers' group that hold no entry: this process's own (when it
-- leaves) and any other idle for longer than the bound (a worker that died). A consumer
-- with pending entries is kept: removing it would lose them before they are reclaimed. One
-- removed while alive and idle costs nothing: its next read makes it again.
-- KEYS: 1 stream
-- ARGV: 1 group, 2 this process's consumer ('' for none), 3 idle bound (ms)
-- Returns the number of consumers removed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then
  return 0  -- no group (yet)
end
local bound = tonumber(ARGV[3])
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
  if name and pending == 0 and (name == ARGV[2] or idle > bound) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
