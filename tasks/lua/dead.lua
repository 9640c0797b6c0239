-- dead.lua: dead-letter a request (unless it already succeeded) and mark it failed.
--
-- KEYS[1]  dead-letter hash of the job (custom_id -> entry JSON)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  results hash of the job
-- KEYS[5]  pending hash of the job (the dead letter keeps the request instead)
-- KEYS[6]  touched hash of the job
-- ARGV[1]  custom_id
-- ARGV[2]  entry (JSON)
--
-- Returns 1 when dead-lettered, 0 when the request had a result already.

if redis.call("HEXISTS", KEYS[4], ARGV[1]) == 1 then
  return 0
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
redis.call("HDEL", KEYS[5], ARGV[1])
redis.call("HDEL", KEYS[6], ARGV[1])
local old = redis.call("HGET", KEYS[2], ARGV[1])
if old ~= "failed" then
  redis.call("HSET", KEYS[2], ARGV[1], "failed")
  if old then redis.call("HINCRBY", KEYS[3], old, -1) end
  redis.call("HINCRBY", KEYS[3], "failed", 1)
end
return 1
