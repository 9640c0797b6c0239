-- record.lua: store a request's result exactly once and mark it done; when that
-- finishes the job, every key of the job expires after the retention.
--
-- KEYS[1]  results hash of the job (custom_id -> output line JSON)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  totals hash of the job (token and cost sums)
-- KEYS[5]  dead-letter hash of the job
-- KEYS[6]  pending hash of the job (custom_id -> request, until it finishes)
-- KEYS[7]  touched hash of the job
-- KEYS[8]  attempts hash of the job (custom_id -> "deferrals retries")
-- KEYS[9]  meta hash of the job (total)
-- KEYS[10..] the job's other keys (expired with it)
-- ARGV[1]  custom_id
-- ARGV[2]  output line (JSON)
-- ARGV[3]  prompt tokens, ARGV[4] completion tokens, ARGV[5] cost in USD
-- ARGV[6]  attempts ("deferrals retries")
-- ARGV[7]  retention, seconds
--
-- Returns 1 when stored, 0 when a result was already there (a redelivery).

local cid = ARGV[1]
local retention = tonumber(ARGV[7])
if redis.call("HSETNX", KEYS[1], cid, ARGV[2]) == 0 then
  return 0
end
local old = redis.call("HGET", KEYS[2], cid)
if old ~= "done" then
  redis.call("HSET", KEYS[2], cid, "done")
  if old then redis.call("HINCRBY", KEYS[3], old, -1) end
  redis.call("HINCRBY", KEYS[3], "done", 1)
end
redis.call("HDEL", KEYS[5], cid)
redis.call("HDEL", KEYS[6], cid)
redis.call("HDEL", KEYS[7], cid)
redis.call("HSET", KEYS[8], cid, ARGV[6])
redis.call("HINCRBY", KEYS[4], "prompt_tokens", ARGV[3])
redis.call("HINCRBY", KEYS[4], "completion_tokens", ARGV[4])
redis.call("HINCRBYFLOAT", KEYS[4], "cost_usd", ARGV[5])
local total = tonumber(redis.call("HGET", KEYS[9], "total") or "0")
local ends = redis.call("HMGET", KEYS[3], "done", "failed")
if total > 0 and tonumber(ends[1] or "0") + tonumber(ends[2] or "0") >= total then
  for i = 1, #KEYS do redis.call("EXPIRE", KEYS[i], retention) end
end
return 1
