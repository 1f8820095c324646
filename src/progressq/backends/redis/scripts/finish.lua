-- Acknowledge a task's stream entry, if the caller's attempt is still the task's current one.
-- KEYS: 1 task hash, 2 stream
-- ARGV: 1 attempt, 2 group, 3 entry id
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return 0
end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
return 1
