-- Heartbeat: reset the idle time of a held lease so that no one reclaims it.
-- KEYS: 1 task hash, 2 stream
-- ARGV: 1 attempt, 2 group, 3 consumer, 4 entry id
-- Returns 0 when the lease is lost, 1 when extended, 2 when extended and cancel was asked.
local h = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'cancel')
if h[1] ~= 'leased' or h[2] ~= ARGV[1] then
  return 0
end
local claimed = redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
if #claimed == 0 then
  return 0
end
if h[3] == '1' then
  return 2
end
return 1
