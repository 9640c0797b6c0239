-- queue.lua: count one request into its job once its message is published, and keep
-- it (with its task id) so that a message the broker loses can be sent again.
--
-- KEYS[1]  meta hash of the job (created_at, total)
-- KEYS[2]  state hash of the job
-- KEYS[3]  counts hash of the job
-- KEYS[4]  pending hash of the job (custom_id -> request, until it finishes)
-- KEYS[5]  touched hash of the job
-- KEYS[6..] the job's other keys (they stop expiring when the request is new)
-- ARGV[1]  custom_id
-- ARGV[2]  request (JSON: url, body, deployment, tenant, task_id)
-- ARGV[3]  now, epoch seconds
--
-- Returns 1 when the request is new to the job, 0 when the job already had it.
-- A worker may have taken the message before this runs: a request already finished
-- (done, or dead-lettered) is left as it is, and its job's expiry too.

local cid = ARGV[1]
local state = redis.call("HGET", KEYS[2], cid)
if state == "done" or state == "failed" then return 0 end
redis.call("HSETNX", KEYS[1], "created_at", ARGV[3])
redis.call("HSET", KEYS[4], cid, ARGV[2])
redis.call("HSET", KEYS[5], cid, ARGV[3])
if state then return 0 end
for i = 1, #KEYS do redis.call("PERSIST", KEYS[i]) end
redis.call("HSET", KEYS[2], cid, "queued")
redis.call("HINCRBY", KEYS[3], "queued", 1)
redis.call("HINCRBY", KEYS[1], "total", 1)
return 1
