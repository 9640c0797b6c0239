-- reserve.lua: decide one request on every dimension at once (all or nothing).
--
-- Each dimension is a GCRA bucket kept as its "theoretical arrival time" (TAT, in
-- microseconds of the Redis clock). A request of cost c conforms at time t when
--   max(tat, t) + c * interval - tolerance <= t
-- where tolerance = capacity * interval (the burst, in time).
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  TAT of the request bucket
-- KEYS[3]  admission log (list), written only when ARGV[8] == "1"
-- KEYS[4]  rate state (hash, see observe.lua and cooldown.lua): the factor (<= 1)
--          each dimension runs at is the smaller of the AIMD factor after a 429
--          (cut, regained with time since cut_at) and the learned one (f_t, f_r)
-- KEYS[5]  booking marker of this reservation (written when booked; see redeem.lua)
-- ARGV[1]  token cost
-- ARGV[2]  request cost
-- ARGV[3]  microseconds per token   (60e6 / tpm)
-- ARGV[4]  microseconds per request (60e6 / rpm)
-- ARGV[5]  token tolerance, microseconds
-- ARGV[6]  request tolerance, microseconds
-- ARGV[7]  booking horizon, microseconds
-- ARGV[8]  "1" to append the admission to the log
-- ARGV[9]  longest admission log kept
-- ARGV[10] reservation id (for the log)
-- ARGV[11] how long a booking marker outlives its start, milliseconds
-- ARGV[12] AIMD factor regained per second after a cut
--
-- A request is booked when the time booked ahead on every bucket is within the
-- horizon; it then starts at most horizon + its own cost's interval from now.
--
-- Returns {outcome, now_us, start_us, wait_us, binding}
--   outcome: 0 granted now, 1 booked at start_us, 2 wait wait_us then ask again,
--            3 never (cost over the burst of dimension `binding`)
--   binding: 1 tokens, 2 requests (the dimension that decided), 0 none

if redis.replicate_commands then redis.replicate_commands() end

local costs = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local intervals = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local tolerances = {tonumber(ARGV[5]), tonumber(ARGV[6])}
local horizon = tonumber(ARGV[7])
local log_on = ARGV[8] == "1"
local log_max = tonumber(ARGV[9])
local rid = ARGV[10]

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call("HMGET", KEYS[4], "cut", "cut_at", "f_t", "f_r")
local aimd = aimd_factor(state[1], state[2], now, tonumber(ARGV[12]))
local factors = {math.min(aimd, tonumber(state[3]) or 1), math.min(aimd, tonumber(state[4]) or 1)}

-- Both TATs in one call: every redis.call costs about as much as the arithmetic here.
local stored = redis.call("MGET", KEYS[1], KEYS[2])
local tats = {}
local increments = {}
local start = now
local binding = 0
local backlog = 0
for d = 1, 2 do
  local increment = costs[d] * intervals[d]
  if increment > tolerances[d] then
    return {3, now, now, 0, d}
  end
  -- A lowered factor spaces admissions further apart (never closer). Not capped at
  -- the burst: a request that fits at the full rate is then booked later, never
  -- refused, and a large request leaves a learned neighbour its share as a small one
  -- does.
  local slowed = increment / factors[d]
  if slowed > increment then increment = slowed end
  increments[d] = increment
  local tat = tonumber(stored[d] or now)
  if tat < now then tat = now end
  tats[d] = tat
  -- Booking depends on the time already booked ahead (the backlog), not on this
  -- request's size, so large requests are never starved by a stream of small ones.
  local ahead = tat - tolerances[d] - now
  if ahead > backlog then backlog = ahead end
  local earliest = math.ceil(tat + increment - tolerances[d])
  if earliest > start then
    start = earliest
    binding = d
  end
end

if start > now and backlog > horizon then
  return {2, now, start, backlog - horizon, binding}
end

for d = 1, 2 do
  -- Starts are monotone across decisions, so admitting at `start` keeps every
  -- bucket's arrivals in order and the conformance bound exact.
  local base = tats[d]
  if start > base then base = start end
  local new_tat = math.ceil(base + increments[d])
  redis.call("SET", KEYS[d], string.format("%d", new_tat), "PX",
             math.floor((new_tat - now) / 1000) + 1000)
end

if log_on then
  redis.call("RPUSH", KEYS[3], string.format("%d %s %s %s", start, ARGV[1], ARGV[2], rid))
  redis.call("LTRIM", KEYS[3], -log_max, -1)
end

if start > now then
  -- The booking is single-use, so that a copy of the message or a forged header
  -- cannot skip the gate.
  redis.call("SET", KEYS[5], "1", "PX",
             math.floor((start - now) / 1000) + tonumber(ARGV[11]))
  return {1, now, start, 0, binding}
end
return {0, now, now, 0, binding}
