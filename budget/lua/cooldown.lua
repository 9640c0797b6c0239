-- cooldown.lua: after a provider 429, admit nothing anywhere before the provider's
-- retry-after, and slow the deployment down (the multiplicative half of AIMD).
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  cooldown marker (Redis microseconds at which the cooldown ends)
-- KEYS[4]  rate state (hash, see observe.lua): fields cut, cut_at, paused_until
-- ARGV[1]  lowest TAT for tokens, as an offset from now, microseconds ("" = no
--          bucket: the window limiter reads the cooldown marker itself)
-- ARGV[2]  lowest TAT for requests, as an offset from now, microseconds ("" = none)
-- ARGV[3]  cooldown length, milliseconds
-- ARGV[4]  rate cut: the factor is multiplied by this (e.g. 0.85)
-- ARGV[5]  lowest factor
-- ARGV[6]  factor regained per second after a cut
--
-- The 429s of one overload arrive together: the rate is cut once per cooldown, not
-- once per refused call. Buckets only ever move later.
--
-- Returns now_us.

if redis.replicate_commands then redis.replicate_commands() end

local cut_by = tonumber(ARGV[4])
local lowest = tonumber(ARGV[5])
local regain = tonumber(ARGV[6])
local cooldown_ms = tonumber(ARGV[3])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cooling = redis.call("EXISTS", KEYS[3]) == 1

for d = 1, 2 do
  if ARGV[d] ~= "" then
    local floor = now + math.ceil(tonumber(ARGV[d]))
    local tat = tonumber(redis.call("GET", KEYS[d]) or now)
    if floor > tat then
      redis.call("SET", KEYS[d], string.format("%d", floor), "PX",
                 math.floor((floor - now) / 1000) + 1000)
    end
  end
end

local until_us = now + cooldown_ms * 1000
local current = tonumber(redis.call("GET", KEYS[3]) or 0)
if until_us > current then
  redis.call("SET", KEYS[3], string.format("%d", until_us), "PX", math.max(1, cooldown_ms))
  -- Kept past the marker: neighbour learning reads the provider's refill during our
  -- own pause as ours, not as a smaller neighbour (observe.lua).
  redis.call("HSET", KEYS[4], "paused_until", string.format("%d", until_us))
  redis.call("EXPIRE", KEYS[4], 3600)
end

if not cooling then
  local state = redis.call("HMGET", KEYS[4], "cut", "cut_at")
  local factor = aimd_factor(state[1], state[2], now, regain) * cut_by
  if factor < lowest then factor = lowest end
  redis.call("HSET", KEYS[4], "cut", string.format("%.6f", factor), "cut_at",
             string.format("%d", now))
  redis.call("EXPIRE", KEYS[4], 3600)
end
return now
