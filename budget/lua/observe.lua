-- observe.lua: after a successful call, read what the provider says is left.
--
-- Two things happen here, both only when the provider sends x-ratelimit-remaining-*:
--  1. Header sync: when less is left than the gate believes, the bucket moves later
--     to match (never earlier).
--  2. Neighbour learning: clients that share the key without asking the gate show
--     up as quota that disappears faster than the gate's own calls explain. Between
--     two samples dt apart, per dimension,
--         neighbour = (left_before - left_now + rate * dt - ours) / dt
--     where `ours` is what this gate let start in between (counted by reserve.lua
--     and redeem.lua). That holds only while the provider's bucket cannot have
--     been full in between (left_before + rate * dt < limit): a full bucket loses
--     refill that would read as a neighbour. A bucket that is (nearly) full
--     again, though, is wasting refill: the estimate is too high, and the sample
--     counts as no neighbour (a probe upward; a neighbour that is really there
--     drains the bucket again and is learned again). Any other sample tells
--     nothing and is skipped. Samples are smoothed with a time
--     constant; the effective factor for reserve.lua is
--         1 - (neighbour + margin) / rate
--     with a margin of one standard error of the smoothed estimate, so it narrows
--     as the estimate steadies, and decays with time once the neighbour goes quiet.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  rate state (hash): ours_t, ours_r (units started, counters);
--          at, left_t, left_r, seen_t, seen_r (the reference sample);
--          n_t, n_r, v_t, v_r (smoothed neighbour rate per second, and the variance
--          of its samples); f_t, f_r (factor for reserve.lua); cut, cut_at (AIMD)
-- ARGV[1]  lowest TAT for tokens as an offset from now, microseconds ("" = keep)
-- ARGV[2]  lowest TAT for requests as an offset from now, microseconds ("" = keep)
-- ARGV[3]  tokens left at the provider ("" = not reported)
-- ARGV[4]  requests left at the provider ("" = not reported)
-- ARGV[5]  tokens per second of the quota
-- ARGV[6]  requests per second of the quota
-- ARGV[7]  the provider's token limit (its bucket size), for "nearly full"
-- ARGV[8]  the provider's request limit
-- ARGV[9]  smoothing time constant, seconds
-- ARGV[10] shortest time between two samples, seconds
-- ARGV[11] lowest factor
--
-- Returns {now_us, moved} where moved counts the buckets that header sync moved.

if redis.replicate_commands then redis.replicate_commands() end

local rates = {tonumber(ARGV[5]), tonumber(ARGV[6])}
local limits = {tonumber(ARGV[7]), tonumber(ARGV[8])}
local tau = tonumber(ARGV[9])
local min_dt = tonumber(ARGV[10])
local lowest = tonumber(ARGV[11])
local dims = {"t", "r"}

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

if ARGV[3] == "" and ARGV[4] == "" then
  return {now, moved}
end

local s = redis.call("HMGET", KEYS[3], "at", "ours_t", "ours_r", "left_t", "left_r",
                     "seen_t", "seen_r", "n_t", "n_r", "v_t", "v_r")
local at = tonumber(s[1])
local ours = {tonumber(s[2]) or 0, tonumber(s[3]) or 0}
local dt = at and (now - at) / 1000000 or nil

if dt and dt < min_dt then
  return {now, moved}  -- too close to the reference sample to tell anything
end

local update = {"at", string.format("%d", now)}
if dt and dt <= 10 * tau then
  local w = 1 - math.exp(-dt / tau)
  -- Standard error of an exponentially smoothed mean, for samples min_dt apart.
  local w_min = 1 - math.exp(-min_dt / tau)
  local se = math.sqrt(w_min / (2 - w_min))
  for d = 1, 2 do
    local left, before = tonumber(ARGV[2 + d]), tonumber(s[3 + d])
    local seen = tonumber(s[5 + d])
    if left and before and seen then
      local refill = rates[d] * dt
      local sample = nil
      if before + refill < limits[d] then
        sample = math.max(0, (before - left + refill - (ours[d] - seen)) / dt)
      elseif left >= limits[d] - refill then
        sample = 0
      end
      if sample then
        local n = tonumber(s[7 + d]) or 0
        local v = tonumber(s[9 + d]) or 0
        n = n + w * (sample - n)
        v = v + w * ((sample - n) ^ 2 - v)
        local factor = 1 - (n + se * math.sqrt(v)) / rates[d]
        if factor < lowest then factor = lowest end
        if factor > 1 then factor = 1 end
        local k = dims[d]
        table.insert(update, "n_" .. k); table.insert(update, string.format("%.6f", n))
        table.insert(update, "v_" .. k); table.insert(update, string.format("%.6f", v))
        table.insert(update, "f_" .. k); table.insert(update, string.format("%.6f", factor))
      end
    end
  end
end
for d = 1, 2 do
  if ARGV[2 + d] ~= "" then
    table.insert(update, "left_" .. dims[d]); table.insert(update, ARGV[2 + d])
    table.insert(update, "seen_" .. dims[d]); table.insert(update, string.format("%d", ours[d]))
  end
end
redis.call("HSET", KEYS[3], unpack(update))
redis.call("EXPIRE", KEYS[3], 3600)
return {now, moved}
