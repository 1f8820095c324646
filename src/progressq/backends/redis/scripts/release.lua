-- Store a task's state (queued) and queue it again, if the writer holds the current attempt.
-- KEYS: 1 task hash, 2 stream, 3 counters
-- ARGV: 1 attempt, 2 record, 3 revision, 4 group, 5 task id
-- Returns 1 when queued again, 0 when fenced out.
local h = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'entry')
if h[1] ~= 'leased' or h[2] ~= ARGV[1] then
  return 0
end
redis.call('XACK', KEYS[2], ARGV[4], h[3])
redis.call('XDEL', KEYS[2], h[3])
local entry = redis.call('XADD', KEYS[2], '*', 't', ARGV[5])
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'rev', ARGV[3], 'status', 'queued', 'state', 'queued',
  'entry', entry, 'deliveries', 0)
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'queued', 1)
return 1
