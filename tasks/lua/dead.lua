-- dead.lua: dead-letter a request (unless it already succeeded) and mark it failed;
-- when that finishes the job, every key of the job expires after the retention.
--
-- KEYS[1]  dead-letter hash of the job (custom_id -> entry JSON)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  results hash of the job
-- KEYS[5]  pending hash of the job (the dead letter keeps the request instead)
-- KEYS[6]  touched hash of the job
-- KEYS[7]  meta hash of the job (total)
-- KEYS[8..] the job's other keys (expired with it)
-- ARGV[1]  custom_id
-- ARGV[2]  entry (JSON)
-- ARGV[3]  retention, seconds
--
-- Returns 1 when dead-lettered, 0 when the request had a result already.

local cid = ARGV[1]
local retention = tonumber(ARGV[3])
if redis.call("HEXISTS", KEYS[4], cid) == 1 then
  return 0
end
redis.call("HSET", KEYS[1], cid, ARGV[2])
redis.call("HDEL", KEYS[5], cid)
redis.call("HDEL", KEYS[6], cid)
local old = redis.call("HGET", KEYS[2], cid)
if old ~= "failed" then
  redis.call("HSET", KEYS[2], cid, "failed")
  if old then redis.call("HINCRBY", KEYS[3], old, -1) end
  redis.call("HINCRBY", KEYS[3], "failed", 1)
end
local total = tonumber(redis.call("HGET", KEYS[7], "total") or "0")
local ends = redis.call("HMGET", KEYS[3], "done", "failed")
if total > 0 and tonumber(ends[1] or "0") + tonumber(ends[2] or "0") >= total then
  for i = 1, #KEYS do redis.call("EXPIRE", KEYS[i], retention) end
end
return 1
