-- snapshot.lua: read a deployment's buckets against the Redis clock, for display.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  cooldown marker
-- KEYS[4]  rate factor
--
-- Returns {now_us, tat_tokens_us, tat_requests_us, cooldown_until_us, factor_ppm};
-- a missing TAT reads as now (a full bucket), a missing cooldown as 0, a missing
-- factor as 1 (1000000 ppm).

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tok = tonumber(redis.call("GET", KEYS[1]) or now)
local req = tonumber(redis.call("GET", KEYS[2]) or now)
local cool = tonumber(redis.call("GET", KEYS[3]) or 0)
local factor = tonumber(redis.call("GET", KEYS[4]) or 1)
return {now, tok, req, cool, math.floor(factor * 1000000)}
