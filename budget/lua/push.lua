-- push.lua: move buckets later so nothing is admitted before a given point.
-- Used after a provider 429 (cooldown) and when the provider's headers say less
-- is left than the gate believes (header sync). It never moves a bucket earlier.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  cooldown marker (written when ARGV[3] > 0)
-- ARGV[1]  lowest TAT for tokens, as an offset from now in microseconds ("" = keep)
-- ARGV[2]  lowest TAT for requests, as an offset from now in microseconds ("" = keep)
-- ARGV[3]  cooldown length in milliseconds (0 = no marker)
--
-- Returns {now_us, moved} where moved counts the buckets that moved.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
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
end
return {now, moved}
