-- redeem.lua: check a booked reservation when its task comes back, and use it up.
--
-- A booking is written by reserve.lua with the deployment's epoch at booking time.
-- A provider 429 (cooldown) moves the epoch on, so bookings made before it are
-- stale: their slots were planned for a provider that has since refused us.
--
-- KEYS[1]  booking marker of this reservation (value: epoch when booked)
-- KEYS[2]  the deployment's epoch (missing = 0)
-- KEYS[3]  rate state (hash): a used booking's units count as started (ours_t, ours_r)
-- ARGV[1]  the booking's start, Redis microseconds
-- ARGV[2]  how early the task may be and still use the booking now, microseconds
-- ARGV[3]  the booking's tokens
-- ARGV[4]  the booking's requests
--
-- Returns {now_us, status}
--   status: 0 valid (used up now), 1 unknown (never booked, already used, or
--           expired), 2 stale (booked before a cooldown; used up), 3 early (kept)

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = tonumber(ARGV[1])
local inline = tonumber(ARGV[2])

local booked = redis.call("GET", KEYS[1])
if not booked then
  return {now, 1}
end
local epoch = redis.call("GET", KEYS[2]) or "0"
if booked ~= epoch then
  redis.call("DEL", KEYS[1])
  return {now, 2}
end
if start - now > inline then
  return {now, 3}
end
redis.call("DEL", KEYS[1])
redis.call("HINCRBY", KEYS[3], "ours_t", ARGV[3])
redis.call("HINCRBY", KEYS[3], "ours_r", ARGV[4])
return {now, 0}
