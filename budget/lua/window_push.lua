-- window_push.lua: add our own extra usage found at settle (accounting "actual") to
-- the window set, at the back of the line (never before any booked start), so that
-- it can only delay admissions. Once per reservation.
--
-- KEYS[1]  the window set: members "tokens requests id", scored by start (see window.lua)
-- KEYS[2]  settled marker of the reservation
-- ARGV[1]  tokens to add (> 0)
-- ARGV[2]  settled marker lifetime, seconds
-- ARGV[3]  how long past starts are kept, microseconds (see window.lua)
--
-- Returns {now_us, applied}: applied is 0 for a settlement seen before.

if redis.replicate_commands then redis.replicate_commands() end

if not redis.call("SET", KEYS[2], "1", "NX", "EX", tonumber(ARGV[2])) then
  return {0, 0}
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = now
local newest = redis.call("ZREVRANGE", KEYS[1], 0, 0, "WITHSCORES")
if newest[2] and tonumber(newest[2]) > at then at = tonumber(newest[2]) end
-- "x": our own extra usage, seen at `now`.
local id = string.format("x%d:%d", now, redis.call("ZCARD", KEYS[1]))
redis.call("ZADD", KEYS[1], string.format("%d", at), window_member(ARGV[1], 0, id))
redis.call("PEXPIRE", KEYS[1], math.floor((at - now + tonumber(ARGV[3])) / 1000) + 1000)
return {now, 1}
