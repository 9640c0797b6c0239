-- redeem.lua: check a booked reservation when its task comes back, and use it up.
--
-- A booking is written by reserve.lua (or window.lua) when it is made; using it
-- deletes it, so a second copy of the message, or a header the gate never wrote,
-- finds nothing and must ask the gate again. A booking whose slot falls inside a
-- provider cooldown that began after it was made is stale: calling then would meet
-- a provider that is refusing us. Bookings beyond the cooldown keep their slots.
--
-- KEYS[1]  booking marker of this reservation
-- KEYS[2]  cooldown marker (Redis microseconds at which the cooldown ends)
-- ARGV[1]  the booking's start, Redis microseconds
-- ARGV[2]  how early the task may be and still use the booking now, microseconds
--
-- Returns {now_us, status}
--   status: 0 valid (used up now), 1 unknown (never booked, already used, or
--           expired), 2 stale (inside a cooldown; used up), 3 early (kept)

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = tonumber(ARGV[1])
local inline = tonumber(ARGV[2])

-- The marker holds the booked start ("1" from versions before it did): a message
-- whose start was edited finds no booking, and the real one keeps it.
local booked = redis.call("GET", KEYS[1])
if not booked or (booked ~= "1" and math.abs(tonumber(booked) - start) > 1) then
  return {now, 1}
end
local cooling_until = tonumber(redis.call("GET", KEYS[2]) or 0)
if cooling_until > now and start < cooling_until then
  redis.call("DEL", KEYS[1])
  return {now, 2}
end
if start - now > inline then
  return {now, 3}
end
redis.call("DEL", KEYS[1])
return {now, 0}
