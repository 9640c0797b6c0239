-- transition.lua: move one request of a job to a new state and keep the counts.
--
-- KEYS[1]  state hash of the job (custom_id -> state)
-- KEYS[2]  counts hash of the job (state -> n)
-- KEYS[3]  touched hash of the job (custom_id -> epoch seconds of the last move)
-- ARGV[1]  custom_id
-- ARGV[2]  new state
-- ARGV[3]  "1" when the move may leave a final state (a replay: failed -> queued)
-- ARGV[4]  now, epoch seconds (a request not touched for long has lost its message)
-- KEYS[4], ARGV[5] (both or neither) the job's cancelled hash (custom_id -> task id of
--          the message cancelled) and this message's task id: the move to "running"
--          just before a call, refused when `cancel` stopped this message since it
--          arrived (cancel.lua skips running requests: one of the two wins)
--
-- Returns 1 when the state changed, 0 when it was already there or final (failed),
-- -1 when the request is done or this message was cancelled: it must not be called.
-- "done" is final; "failed" is final unless ARGV[3] is "1".

local old = redis.call("HGET", KEYS[1], ARGV[1])
local new = ARGV[2]
if old == "done" then return -1 end
if KEYS[4] and ARGV[5] ~= "" and redis.call("HGET", KEYS[4], ARGV[1]) == ARGV[5] then
  return -1
end
if old == "failed" and ARGV[3] ~= "1" then return 0 end
redis.call("HSET", KEYS[3], ARGV[1], ARGV[4])
if old == new then return 0 end
redis.call("HSET", KEYS[1], ARGV[1], new)
if old then redis.call("HINCRBY", KEYS[2], old, -1) end
redis.call("HINCRBY", KEYS[2], new, 1)
return 1
