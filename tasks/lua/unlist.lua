-- unlist.lua: take a job off the index of open jobs, unless it was listed again.
--
-- KEYS[1]  the index of open jobs (job id -> epoch seconds it was last listed)
-- ARGV     pairs: job id, the score read before its requests were counted
--
-- Returns how many were removed. A publisher writes a request's `touched` entry
-- before it lists the job (ZADD with a new score): a job whose score moved since
-- it was read may have a request the reader did not count, and stays.

local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call("ZSCORE", KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call("ZREM", KEYS[1], ARGV[i])
  end
end
return removed
