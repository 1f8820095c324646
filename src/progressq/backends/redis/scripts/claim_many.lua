-- Claim several reclaimed stream entries at once: claim.lua for each, in one round trip.
-- The body of claim.lua is prepended as the function `claim(KEYS, ARGV)`.
-- KEYS: 1 stream, 2 counters, 3 running tasks per owner, 4.. task hashes
-- ARGV: 1 group, 2 consumer, 3.. entry ids (in the order of the task hashes)
-- Returns one claim.lua answer per entry, in order.
local answers = {}
for i = 4, #KEYS do
  answers[#answers + 1] = claim({KEYS[i], KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[i - 1]})
end
return answers
