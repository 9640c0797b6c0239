-- claim.lua: take a dead letter for replay, only if it is still the one we read.
--
-- KEYS[1]  dead-letter hash of the job
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- ARGV[1]  custom_id
-- ARGV[2]  the entry as read (JSON)
--
-- Returns 1 when claimed (removed, state back to queued), 0 when it changed.

if redis.call("HGET", KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call("HDEL", KEYS[1], ARGV[1])
local old = redis.call("HGET", KEYS[2], ARGV[1])
redis.call("HSET", KEYS[2], ARGV[1], "queued")
if old then redis.call("HINCRBY", KEYS[3], old, -1) end
redis.call("HINCRBY", KEYS[3], "queued", 1)
return 1
