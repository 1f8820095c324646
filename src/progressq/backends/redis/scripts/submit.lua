-- Store and queue a new task (enqueue.lua) and announce it (publish.lua, `taskQueued`) in
-- one step, unless its owner already has the most unfinished tasks allowed. The bodies of
-- enqueue.lua and publish.lua are prepended as the functions `enqueue(KEYS, ARGV)` and
-- `publish(KEYS, ARGV)`.
-- A task with a unique key is not queued while its owner has an unfinished task with that
-- key: checked before the limit (a submit answered with the existing task adds none).
-- KEYS: 1-8 enqueue.lua's KEYS, 9 seq counter, 10 history stream, 11 enqueue.lua's KEYS 9
-- ARGV: 1-7 enqueue.lua's ARGV, 8-14 publish.lua's ARGV 1-7, 15 most unfinished tasks per
--       owner (0: no limit), 16-17 enqueue.lua's ARGV 8-9 (when it may run, unique key), 18 the
--       task hashes' key prefix (the key's holder is read by name)
-- Returns {1, seq} when queued, {0} when the queue is full, {-1} when the id is taken,
-- {-2, unfinished} when the owner is at its limit (nothing queued), {-3, task id} when the
-- owner's unfinished task of that id has the key (nothing queued).
if ARGV[17] ~= '' then
  local holder = redis.call('HGET', KEYS[11], ARGV[17])
  if holder then
    local state = redis.call('HGET', ARGV[18] .. holder, 'state')
    if state and state ~= 'done' then
      return {-3, holder}
    end
  end
end
local limit = tonumber(ARGV[15])
if limit > 0 then
  local unfinished = tonumber(redis.call('HGET', KEYS[5], ARGV[3]) or '0')
  if unfinished >= limit then
    return {-2, unfinished}
  end
end
local done = enqueue({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[11]},
  {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[16], ARGV[17]})
if done ~= 1 then
  return {done}
end
return {1, publish({KEYS[9], KEYS[10], KEYS[1]}, {ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14]})}
