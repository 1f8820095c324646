-- Take a delivered (or reclaimed) stream entry for this consumer and bump the task's attempt.
-- KEYS: 1 task hash, 2 stream, 3 counters, 4 running tasks per owner
-- ARGV: 1 group, 2 consumer, 3 entry id, 4 'fresh' when this script's caller has just read
--       the entry for this consumer (it is pending here: no XCLAIM needed)
-- Returns {0} (nothing to run), {2, record, attempt, rev, cancel, pub} (already finished:
-- its final state may still need publishing) or {1, record, attempt, rev, cancel, deliveries}.
if ARGV[4] ~= 'fresh' and #redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID') == 0 then
  return {0}
end
local h = redis.call('HMGET', KEYS[1], 'state', 'entry', 'attempt', 'rev', 'deliveries', 'data', 'cancel', 'pub',
  'owner')
if not h[1] or h[2] ~= ARGV[3] then
  -- the task expired, or this entry is not its current one
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
  return {0}
end
if h[1] == 'done' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
  return {2, h[6], tonumber(h[3]), tonumber(h[4]), tonumber(h[7]), tonumber(h[8])}
end
if h[1] == 'queued' then
  redis.call('HINCRBY', KEYS[3], 'queued', -1)
  redis.call('HINCRBY', KEYS[3], 'running', 1)
  redis.call('HINCRBY', KEYS[4], h[9], 1)  -- counted against its owner's cap until it ends
end
local attempt = tonumber(h[3]) + 1
local rev = tonumber(h[4]) + 1
local deliveries = tonumber(h[5]) + 1
redis.call('HSET', KEYS[1], 'state', 'leased', 'attempt', attempt, 'rev', rev, 'deliveries', deliveries)
return {1, h[6], attempt, rev, tonumber(h[7]), deliveries}
