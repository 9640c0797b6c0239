-- cancel.lua: cancel waiting requests of a job: each still queued, deferred or retrying
-- (never one running or finished) is dead-lettered and its message marked, so that
-- the message is dropped when it reaches a worker; when that finishes the job, every
-- key of the job expires after the retention.
--
-- KEYS[1]  state hash of the job
-- KEYS[2]  counts hash of the job
-- KEYS[3]  dead-letter hash of the job
-- KEYS[4]  pending hash of the job (the dead letter keeps the request instead)
-- KEYS[5]  touched hash of the job
-- KEYS[6]  cancelled hash of the job (custom_id -> task id of the cancelled message)
-- KEYS[7]  results hash of the job
-- KEYS[8]  unsent set of the job
-- KEYS[9]  meta hash of the job (total)
-- KEYS[10..] the job's other keys (expired with it)
-- ARGV[1]  retention, seconds
-- ARGV[2..] triples: custom_id, dead-letter entry (JSON), task id of its message
--
-- Returns how many requests were cancelled.

local retention = tonumber(ARGV[1])
local waiting = {queued = true, deferred = true, retrying = true}
local n = 0
for i = 2, #ARGV, 3 do
  local cid = ARGV[i]
  local old = redis.call("HGET", KEYS[1], cid)
  if old and waiting[old] and redis.call("HEXISTS", KEYS[7], cid) == 0 then
    redis.call("HSET", KEYS[6], cid, ARGV[i + 2])
    redis.call("HSET", KEYS[3], cid, ARGV[i + 1])
    redis.call("HDEL", KEYS[4], cid)
    redis.call("HDEL", KEYS[5], cid)
    redis.call("SREM", KEYS[8], cid)
    redis.call("HSET", KEYS[1], cid, "failed")
    redis.call("HINCRBY", KEYS[2], old, -1)
    redis.call("HINCRBY", KEYS[2], "failed", 1)
    n = n + 1
  end
end
local total = tonumber(redis.call("HGET", KEYS[9], "total") or "0")
local ends = redis.call("HMGET", KEYS[2], "done", "failed")
if n > 0 and total > 0 and tonumber(ends[1] or "0") + tonumber(ends[2] or "0") >= total then
  for i = 1, #KEYS do redis.call("EXPIRE", KEYS[i], retention) end
end
return n
