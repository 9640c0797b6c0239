-- add_queued.lua: mark requests of a job "queued", each only if the job does not
-- have it yet (HSETNX for many fields: one command per request would be one
-- command's overhead per request of a large submit).
--
-- KEYS[1]  state hash of the job
-- ARGV     custom_ids
--
-- Returns how many were new to the job.

local added = 0
for i = 1, #ARGV do
  added = added + redis.call("HSETNX", KEYS[1], ARGV[i], "queued")
end
return added
