-- Read up to ARGV[3] new stream entries for this consumer, without waiting, and claim them
-- (claim.lua for each), in one round trip. The body of claim.lua is prepended as the function
-- `claim(KEYS, ARGV)`. A task's hash key is its id after ARGV[4] (the keys' prefix), which
-- is only known once the entry is read: this script names keys it was not passed, which a
-- single Redis allows (the backend does not support Redis Cluster).
-- KEYS: 1 stream, 2 counters
-- ARGV: 1 group, 2 consumer, 3 count, 4 task key prefix
-- Returns {entry id, claim.lua's answer} per entry read, in order (none: nothing was waiting).
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local answers = {}
if not read then
  return answers
end
for _, entry in ipairs(read[1][2]) do
  local fields = entry[2]
  local task = nil
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == 't' then
        task = fields[i + 1]
      end
    end
  end
  if task then
    answers[#answers + 1] = {entry[1], claim({ARGV[4] .. task, KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2], entry[1]})}
  end
end
return answers
