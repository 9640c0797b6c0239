-- observe.lua: after a successful call, read what the provider says is left.
--
-- Two things happen here, both only when the provider sends x-ratelimit-remaining-*:
--  1. Header sync: when less is left than the gate believes, the bucket moves later
--     to match (never earlier): a neighbour that drains the provider's bucket
--     pushes the gate back at once, before it is learned.
--  2. Neighbour learning: clients that share the key without asking the gate drain
--     the provider's bucket faster than the gate's own calls. Rather than estimate
--     them from differences of noisy, out-of-order samples, the gate holds the
--     provider's bucket at a set level (`reserve` tokens left) with a PI
--     controller, per dimension, x = left - reserve:
--         n     <- n - x * dt / T^2          (the share left free, tokens/s)
--         n_eff  = n - 2 * x / T             (what reserve.lua leaves free now)
--         factor = 1 - n_eff / rate
--     (critically damped, time constant T). Held level means the bucket loses
--     nothing to overflow and nobody is refused: our rate + theirs = the quota, so
--     n converges on the neighbours' rate while the gate has work waiting. When
--     they go quiet the bucket fills, x > 0, and the share comes back within ~T.
--     The standing cost is the reserve, once, not a rate margin.
--     A surplus is evidence of a smaller neighbour only when the gate is using what
--     it admits: tokens free in the gate's own bucket (workers between two intakes,
--     no work at all) fill the provider's too, so that part of x > 0 is not learned.
--     The set level is never above half of what the gate's own full burst leaves at
--     the provider (gate.py), so that burst alone never reads as a neighbour.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  rate state (hash): at (last update), n_t, n_r (learned share, per
--          second); x_t, x_r (last reading's x); f_t, f_r (factor for reserve.lua);
--          cut, cut_at (AIMD); paused_until (the last cooldown's end)
-- ARGV[1]  lowest TAT for tokens as an offset from now, microseconds ("" = keep)
-- ARGV[2]  lowest TAT for requests as an offset from now, microseconds ("" = keep)
-- ARGV[3]  tokens left at the provider ("" = not learning from it)
-- ARGV[4]  requests left at the provider ("" = not learning from it)
-- ARGV[5]  tokens per second of the quota
-- ARGV[6]  requests per second of the quota
-- ARGV[7]  tokens to keep left at the provider (the set level)
-- ARGV[8]  requests to keep left at the provider
-- ARGV[9]  time constant T, seconds
-- ARGV[10] shortest time between two updates, seconds
-- ARGV[11] lowest factor
-- ARGV[12] "1" when learning is on; "0" forgets what was learned (switched off)
-- ARGV[13] microseconds per token of the gate's bucket
-- ARGV[14] microseconds per request of the gate's bucket
-- ARGV[15] token tolerance of the gate's bucket, microseconds
-- ARGV[16] request tolerance of the gate's bucket, microseconds
-- ARGV[17] when the provider counted this reading (the call's start, Redis
--          microseconds; "" = now). Readings are used in that order: one older than
--          the last used (a long call's reply) is not learned from.
--
-- Returns {now_us, moved} where moved counts the buckets that header sync moved.

if redis.replicate_commands then redis.replicate_commands() end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local tats = redis.call("MGET", KEYS[1], KEYS[2])
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

if ARGV[12] == "0" then
  redis.call("HDEL", KEYS[3], "n_t", "n_r", "x_t", "x_r", "f_t", "f_r", "at")
  return {now, moved}
end
if ARGV[3] == "" and ARGV[4] == "" then
  return {now, moved}
end

local s = redis.call("HMGET", KEYS[3], "at", "n_t", "n_r", "x_t", "x_r", "paused_until")
local at = tonumber(s[1])
local tau = tonumber(ARGV[9])
local seen = now
if ARGV[17] ~= "" and tonumber(ARGV[17]) < now then seen = tonumber(ARGV[17]) end
-- A reading within a time constant of a cooldown's end: the provider refilled while
-- the gate admitted nothing, which says nothing of a smaller neighbour.
local paused = seen < (tonumber(s[6]) or 0) + tonumber(ARGV[9]) * 1000000
local dt = 0
if at then
  dt = (seen - at) / 1000000
  if dt < tonumber(ARGV[10]) then
    return {now, moved}  -- updated a moment ago
  end
  -- A reading after a lull in our own responses speaks for the level now, not for
  -- the lull: our calls paused (workers busy, a stall) and the bucket filled, which
  -- is our idleness, not a smaller neighbour. It counts as two sampling intervals.
  local most_dt = 2 * tonumber(ARGV[10])
  if dt > most_dt then dt = most_dt end
end

local lowest = tonumber(ARGV[11])
local update = {"at", string.format("%d", seen)}
local dims = {"t", "r"}
for d = 1, 2 do
  local left = tonumber(ARGV[2 + d])
  if left then
    local rate = tonumber(ARGV[4 + d])
    local most = rate * (1 - lowest)
    local x = left - tonumber(ARGV[6 + d])
    if x > 0 and paused then
      x = 0
    elseif x > 0 then
      local tat = tonumber(tats[d] or now)
      local idle = (now + tonumber(ARGV[14 + d]) - math.max(tat, now)) / tonumber(ARGV[12 + d])
      x = math.max(0, x - math.max(0, idle))
    end
    -- The level moved from the last reading to this one: integrate the average.
    local x_before = tonumber(s[3 + d]) or x
    local n = (tonumber(s[1 + d]) or 0) - (x + x_before) / 2 * dt / (tau * tau)
    n = math.max(0, math.min(most, n))
    local n_eff = math.max(0, math.min(most, n - 2 * x / tau))
    local k = dims[d]
    table.insert(update, "n_" .. k); table.insert(update, string.format("%.6f", n))
    table.insert(update, "x_" .. k); table.insert(update, string.format("%.3f", x))
    table.insert(update, "f_" .. k)
    table.insert(update, string.format("%.6f", 1 - n_eff / rate))
  end
end
redis.call("HSET", KEYS[3], unpack(update))
redis.call("EXPIRE", KEYS[3], 3600)
return {now, moved}
