-- queue.lua: count one request into its job as it is published, and keep it (with
-- its task id) so that a message the broker loses can be sent again.
--
-- KEYS[1]  meta hash of the job (created_at, total)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  pending hash of the job (custom_id -> request, until it finishes)
-- KEYS[5]  touched hash of the job
-- ARGV[1]  custom_id
-- ARGV[2]  request (JSON: url, body, deployment, tenant, task_id)
-- ARGV[3]  now, epoch seconds
--
-- Returns 1 when the request is new to the job, 0 when the job already had it.
-- A request already done keeps its result: nothing is written for it.

local cid = ARGV[1]
redis.call("HSETNX", KEYS[1], "created_at", ARGV[3])
local state = redis.call("HGET", KEYS[2], cid)
if state == "done" then return 0 end
redis.call("HSET", KEYS[4], cid, ARGV[2])
redis.call("HSET", KEYS[5], cid, ARGV[3])
if state then return 0 end
redis.call("HSET", KEYS[2], cid, "queued")
redis.call("HINCRBY", KEYS[3], "queued", 1)
redis.call("HINCRBY", KEYS[1], "total", 1)
return 1
