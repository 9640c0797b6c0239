-- snapshot.lua: read a deployment's buckets against the Redis clock, for display.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  cooldown marker
-- KEYS[4]  rate state (hash, see observe.lua)
-- ARGV[1]  AIMD factor regained per second after a cut
--
-- Returns {now_us, tat_tokens_us, tat_requests_us, cooldown_until_us, aimd_ppm,
--          f_t_ppm, f_r_ppm, n_t_milli, n_r_milli}: a missing TAT reads as now (a full
-- bucket), a missing cooldown as 0, missing factors as 1 (1000000 ppm); n_* are the
-- learned neighbour rates per second, in thousandths.

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tok = tonumber(redis.call("GET", KEYS[1]) or now)
local req = tonumber(redis.call("GET", KEYS[2]) or now)
local cool = tonumber(redis.call("GET", KEYS[3]) or 0)
local s = redis.call("HMGET", KEYS[4], "cut", "cut_at", "f_t", "f_r", "n_t", "n_r")
local aimd = aimd_factor(s[1], s[2], now, tonumber(ARGV[1]))
local function ppm(x) return math.floor((tonumber(x) or 1) * 1000000) end
local function milli(x) return math.floor((tonumber(x) or 0) * 1000) end
return {now, tok, req, cool, ppm(aimd), ppm(s[3]), ppm(s[4]), milli(s[5]), milli(s[6])}
