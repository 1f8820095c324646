-- Give an event the identity's next seq, keep it in the history and publish it, in one step,
-- so that publish order is seq order. An event about a task that has moved on (a newer
-- revision is stored, or this revision was already published) is dropped: that is what keeps
-- a worker that lost its lease from reaching a client, and a retried publish from repeating.
-- KEYS: 1 seq counter, 2 history stream, 3 task hash (may not exist)
-- ARGV: 1 kind, 2 task id, 3 revision, 4 task view (JSON), 5 history length, 6 ttl (s), 7 channel,
--       8 'stored' to publish only if the task hash exists (optional)
-- Returns the seq, or 0 when dropped.
local rev = tonumber(ARGV[3])
if ARGV[8] == 'stored' and redis.call('EXISTS', KEYS[3]) == 0 then
  return 0  -- announcing a new task that its enqueue (in the same transaction) refused
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local h = redis.call('HMGET', KEYS[3], 'rev', 'pub')
  if tonumber(h[1] or '0') > rev or tonumber(h[2] or '0') >= rev then
    return 0
  end
  redis.call('HSET', KEYS[3], 'pub', rev)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'k', ARGV[1], 't', ARGV[2], 'r', ARGV[3], 'j', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[7], seq .. ':' .. ARGV[3] .. ':' .. ARGV[1] .. ':' .. #ARGV[2] .. ':' .. ARGV[2] .. ARGV[4])
return seq
