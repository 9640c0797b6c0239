-- push.lua: move buckets later so nothing is admitted before a given point.
-- Used after a provider 429 (cooldown) and when the provider's headers say less
-- is left than the gate believes (header sync). It never moves a bucket earlier.
-- It also adjusts the rate factor: a 429 means someone else shares the quota, so
-- the gate slows down multiplicatively and speeds up again additively (AIMD).
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  cooldown marker (written when ARGV[3] > 0)
-- KEYS[4]  rate factor (missing = 1)
-- KEYS[5]  the deployment's epoch: a cooldown moves it on, which makes every
--          booking made before it stale (redeem.lua)
-- ARGV[1]  lowest TAT for tokens, as an offset from now in microseconds ("" = keep)
-- ARGV[2]  lowest TAT for requests, as an offset from now in microseconds ("" = keep)
-- ARGV[3]  cooldown length in milliseconds (0 = no marker)
-- ARGV[4]  rate factor change: "x0.85" multiplies (after a 429; ignored while a
--          cooldown is already running), "+0.002" adds (after a success), "" keeps;
--          the factor stays within [ARGV[5], 1]
-- ARGV[5]  lowest rate factor
--
-- Returns {now_us, moved} where moved counts the buckets that moved.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The 429s of one overload arrive together: slow down once per cooldown, not once
-- per refused call.
local cooling = redis.call("EXISTS", KEYS[3]) == 1
local moved = 0
for d = 1, 2 do
  if ARGV[d] ~= "" then
    local floor = now + math.ceil(tonumber(ARGV[d]))
    local tat = tonumber(redis.call("GET", KEYS[d]) or now)
    if floor > tat then
      redis.call("SET", KEYS[d], string.format("%d", floor), "PX",
                 math.floor((floor - now) / 1000) + 1000)
      moved = moved + 1
    end
  end
end
local cooldown_ms = tonumber(ARGV[3])
if cooldown_ms > 0 then
  local until_us = now + cooldown_ms * 1000
  local current = tonumber(redis.call("GET", KEYS[3]) or 0)
  if until_us > current then
    redis.call("SET", KEYS[3], string.format("%d", until_us), "PX", cooldown_ms)
  end
  redis.call("INCR", KEYS[5])
end
local change = ARGV[4]
if string.sub(change, 1, 1) == "x" and cooling then change = "" end
if change ~= "" then
  local factor = tonumber(redis.call("GET", KEYS[4]) or 1)
  local amount = tonumber(string.sub(change, 2))
  if string.sub(change, 1, 1) == "x" then
    factor = factor * amount
  else
    factor = factor + amount
  end
  local lowest = tonumber(ARGV[5])
  if factor < lowest then factor = lowest end
  if factor >= 1 then
    redis.call("DEL", KEYS[4])
  else
    redis.call("SET", KEYS[4], string.format("%.6f", factor), "EX", 3600)
  end
end
return {now, moved}
