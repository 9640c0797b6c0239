-- window_sync.lua: header sync for the window limiter. The provider's x-ratelimit-
-- remaining-* headers count over its own period (Azure: the minute); usage there
-- beyond the gate's own starts over that period is someone else's, and the gate
-- leaves it free by running at a lower factor (window.lua shrinks each window's
-- allowance by it).
--
-- Each reading is a level, not an increment: the same usage reported by many
-- responses is counted once. The neighbour's rate is held at the highest recent
-- reading and decays with `hold` seconds, because a counter over a fixed period
-- restarts at zero and would read low right after.
--
-- KEYS[1]  the window set (see window.lua): the gate's own starts
-- KEYS[2]  rate state (hash): at (last reading), n_t, n_r (neighbour's rate per
--          second), f_t, f_r (factor for window.lua)
-- ARGV[1]  tokens the provider reports left ("" = not reported)
-- ARGV[2]  requests the provider reports left ("" = not reported)
-- ARGV[3]  tokens the provider allows per period
-- ARGV[4]  requests the provider allows per period
-- ARGV[5]  the provider's counting period, microseconds
-- ARGV[6]  when the provider counted (the call's start, Redis microseconds)
-- ARGV[7]  shortest time between two readings, seconds
-- ARGV[8]  hold: seconds over which a neighbour's rate decays once unseen
-- ARGV[9]  share of the allowance read as noise, not as a neighbour
-- ARGV[10] lowest factor
-- ARGV[11] "1" when learning is on; "0" forgets what was learned
--
-- Returns {now_us, learning}: learning is 1 while a neighbour's share is left free.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[11] == "0" then
  redis.call("HDEL", KEYS[2], "n_t", "n_r", "f_t", "f_r", "at")
  return {now, 0}
end

local s = redis.call("HMGET", KEYS[2], "at", "n_t", "n_r")
local last = tonumber(s[1])
if last and (now - last) / 1000000 < tonumber(ARGV[7]) then
  return {now, 0}
end

local period = tonumber(ARGV[5])
local seen = math.min(tonumber(ARGV[6]), now)
local own = {0, 0}
local starts = redis.call("ZRANGEBYSCORE", KEYS[1], string.format("(%d", seen - period),
                          string.format("%d", seen))
for i = 1, #starts do
  local tok, req = window_units(starts[i])
  own[1] = own[1] + tok
  own[2] = own[2] + req
end

local decay = 1
if last then decay = math.exp(-(now - last) / 1000000 / tonumber(ARGV[8])) end
local noise = tonumber(ARGV[9])
local lowest = tonumber(ARGV[10])
local update = {"at", string.format("%d", now)}
local learning = 0
local dims = {"t", "r"}
for d = 1, 2 do
  local left = tonumber(ARGV[d])
  local allowed = tonumber(ARGV[2 + d])
  local rate = allowed / (period / 1000000)
  local held = (tonumber(s[1 + d]) or 0) * decay
  local reading = 0
  if left then
    local others = allowed - left - own[d] - noise * allowed
    if others > 0 then reading = others / (period / 1000000) end
  end
  local n = math.min(math.max(reading, held), rate * (1 - lowest))
  if n < rate * 1e-4 then n = 0 end
  if n > 0 then learning = 1 end
  local k = dims[d]
  table.insert(update, "n_" .. k); table.insert(update, string.format("%.6f", n))
  table.insert(update, "f_" .. k); table.insert(update, string.format("%.6f", 1 - n / rate))
end
redis.call("HSET", KEYS[2], unpack(update))
redis.call("EXPIRE", KEYS[2], 3600)
return {now, learning}
