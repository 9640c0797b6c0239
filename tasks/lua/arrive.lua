-- arrive.lua: a delivery of a request begins.
--
-- KEYS[1]  results hash of the job
-- KEYS[2]  state hash of the job
-- KEYS[3]  touched hash of the job
-- KEYS[4]  cancelled hash of the job (custom_id -> task id of the message cancelled)
-- ARGV[1]  custom_id
-- ARGV[2]  "1" on a first delivery (count the request in if its publisher did not)
-- ARGV[3]  now, epoch seconds
-- ARGV[4]  the message's task id ("" when unknown)
--
-- Returns {result or false, 1 when the request was new to the job else 0,
-- 1 when this message was cancelled else 0}.
-- An unfinished request is touched: the recovery sweep sees that it moved, even
-- while its state stays "queued" (a stalled worker's message is not taken for lost).

local cid = ARGV[1]
if ARGV[4] ~= "" and redis.call("HGET", KEYS[4], cid) == ARGV[4] then
  return {false, 0, 1}
end
local result = redis.call("HGET", KEYS[1], cid)
if result then return {result, 0, 0} end
local added = 0
if ARGV[2] == "1" then
  added = redis.call("HSETNX", KEYS[2], cid, "queued")
end
local state = redis.call("HGET", KEYS[2], cid)
if state ~= "done" and state ~= "failed" then
  redis.call("HSET", KEYS[3], cid, ARGV[3])
end
return {false, added, 0}
