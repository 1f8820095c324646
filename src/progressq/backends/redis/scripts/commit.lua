-- Save a task's new state and publish it to its owner in one step (and, for a terminal
-- state, acknowledge its stream entry): save.lua, then publish.lua, then finish's XACK, in
-- one round trip. Their bodies are prepended as the functions `save(KEYS, ARGV)` and
-- `publish(KEYS, ARGV)`; a fenced-out save publishes and acknowledges nothing.
-- KEYS: 1-8 save.lua's KEYS, 9 seq counter, 10 history stream, 11 stream
-- ARGV: 1-9 save.lua's ARGV, 10-16 publish.lua's ARGV 1-7, 17 acknowledge (0/1), 18 group,
--       19 entry id
-- Returns {0, 0} when fenced out, else {1, seq} (seq 0: the event was dropped as stale).
if save({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]},
    {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]}) == 0 then
  return {0, 0}
end
local seq = publish({KEYS[9], KEYS[10], KEYS[1]},
  {ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]})
if ARGV[17] == '1' then
  redis.call('XACK', KEYS[11], ARGV[18], ARGV[19])
  redis.call('XDEL', KEYS[11], ARGV[19])
end
return {1, seq}
