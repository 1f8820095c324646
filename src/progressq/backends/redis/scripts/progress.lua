-- The progress script: a batch of `progress` rows only (the reports of running tasks, most of
-- a worker's commits), each as `commit` runs it in a batch of the whole script. A script of its
-- own because Redis runs a script's whole text on every call: the whole script makes some thirty
-- functions and tables before its first row, and its batches carry the shard's keys and
-- settings as twenty arguments; this one makes four functions, and the settings it needs are
-- in its text (`s`, written before commits.lua by _scripts.py: one script per shard, compiled
-- once). A batch that holds any other row goes to the whole script.
--
-- KEYS: each row's keys in turn, ARGV: each row's fields in turn, both as a `progress` row of a
-- batch of the whole script (operations.lua, ROW progress) without its name:
-- PROGRESS: task seq history attempt record revision status event channel
-- Returns each row's answer (`commit`'s, or its error), in order.

local answers = {}
local key = 1
for at = 0, #ARGV - 1, 6 do  -- where a row's fields start, less one (as `commit` reads them)
  answers[#answers + 1] = row_answer(pcall(commit, s, at, KEYS[key], KEYS[key + 1], KEYS[key + 2], nil))
  key = key + 3
end
return answers
