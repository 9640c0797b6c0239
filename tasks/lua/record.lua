-- record.lua: store a request's result exactly once and mark it done.
--
-- KEYS[1]  results hash of the job (custom_id -> output line JSON)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  totals hash of the job (token and cost sums)
-- KEYS[5]  dead-letter hash of the job
-- KEYS[6]  pending hash of the job (custom_id -> request, until it finishes)
-- KEYS[7]  touched hash of the job
-- ARGV[1]  custom_id
-- ARGV[2]  output line (JSON)
-- ARGV[3]  prompt tokens, ARGV[4] completion tokens, ARGV[5] cost in USD
--
-- Returns 1 when stored, 0 when a result was already there (a redelivery).

if redis.call("HSETNX", KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local old = redis.call("HGET", KEYS[2], ARGV[1])
if old ~= "done" then
  redis.call("HSET", KEYS[2], ARGV[1], "done")
  if old then redis.call("HINCRBY", KEYS[3], old, -1) end
  redis.call("HINCRBY", KEYS[3], "done", 1)
end
redis.call("HDEL", KEYS[5], ARGV[1])
redis.call("HDEL", KEYS[6], ARGV[1])
redis.call("HDEL", KEYS[7], ARGV[1])
redis.call("HINCRBY", KEYS[4], "prompt_tokens", ARGV[3])
redis.call("HINCRBY", KEYS[4], "completion_tokens", ARGV[4])
redis.call("HINCRBYFLOAT", KEYS[4], "cost_usd", ARGV[5])
return 1
