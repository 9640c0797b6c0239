-- window.lua: decide one request on every dimension at once (all or nothing), for a
-- provider that counts over fixed windows whose phase the client does not know (Azure).
--
-- The promise: for every interval of a window's length, at any phase, the starts
-- inside it cost at most the window's allowance. Starts are kept in one sorted set,
-- scored by start. A request of cost c may start at t when, on each dimension, every
-- interval of the window's length that holds t holds at most allowance - c.
--
-- Two places are tried, and the earlier wins:
-- - the back of the line, at or after the last start (FIFO): there only the starts in
--   (t - window, t] count, and the earliest t is exact: walking back from the newest
--   start, the first start s at which the running sum passes allowance - c must leave
--   the window, so t = s + window;
-- - a gap before the last start (backfill): the earliest t from now at which the
--   request fits beside the starts on both sides of t. A booked start never moves, so
--   a large request keeps its place at the back and is never starved by small ones.
--
-- The windows passed in are the provider's plus a guard band: a call that reaches the
-- provider up to the guard after its slot still lands where the gate counted it.
--
-- KEYS[1]  the window set: members "tokens requests id", scored by start (microseconds)
-- KEYS[2]  cooldown marker: nothing starts before this (Redis microseconds; missing = 0)
-- KEYS[3]  rate state (hash, see reserve.lua): the factor each dimension runs at
--          shrinks its windows' allowance
-- KEYS[4]  admission log (list), written only when ARGV[8] == "1"
-- KEYS[5]  booking marker of this reservation (written when booked; see redeem.lua)
-- ARGV[1]  token cost
-- ARGV[2]  request cost
-- ARGV[3]  tokens allowed per token window
-- ARGV[4]  requests allowed per request window
-- ARGV[5]  token window, microseconds (provider's window + guard)
-- ARGV[6]  request window, microseconds (provider's window + guard)
-- ARGV[7]  booking horizon, microseconds
-- ARGV[8]  "1" to append the admission to the log
-- ARGV[9]  longest admission log kept
-- ARGV[10] how long past starts are kept, microseconds (at least the longest window;
--          header sync reads the gate's own starts over the provider's counter)
-- ARGV[11] reservation id (for the log)
-- ARGV[12] how long a booking marker outlives its start, milliseconds
-- ARGV[13] AIMD factor regained per second after a cut
--
-- A request is booked when the last booked start (or the cooldown's end) is within the
-- horizon; it then starts at most horizon + one window from now.
--
-- Returns {outcome, now_us, start_us, wait_us, binding}, as reserve.lua does:
--   outcome: 0 granted now, 1 booked at start_us, 2 wait wait_us then ask again,
--            3 never (cost over the allowance of dimension `binding`)
--   binding: 1 tokens, 2 requests (the dimension that decided), 0 none

if redis.replicate_commands then redis.replicate_commands() end

local costs = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local allowances = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local windows = {tonumber(ARGV[5]), tonumber(ARGV[6])}
local horizon = tonumber(ARGV[7])
local log_on = ARGV[8] == "1"
local log_max = tonumber(ARGV[9])
local memory = tonumber(ARGV[10])
local rid = ARGV[11]

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(redis.call("GET", KEYS[2]) or 0)
local state = redis.call("HMGET", KEYS[3], "cut", "cut_at", "f_t", "f_r")
local aimd = aimd_factor(state[1], state[2], now, tonumber(ARGV[13]))
local factors = {math.min(aimd, tonumber(state[3]) or 1), math.min(aimd, tonumber(state[4]) or 1)}
local longest = math.max(windows[1], windows[2])

local room = {}
for d = 1, 2 do
  if costs[d] > allowances[d] then
    return {3, now, now, 0, d}
  end
  -- A lowered factor shrinks every window's allowance, leaving the rest to whoever
  -- else uses the quota, but never below this request: it may always run alone.
  local allow = allowances[d] * factors[d]
  if allow < costs[d] then allow = costs[d] end
  room[d] = allow - costs[d]
end

-- Forget the starts that no window from now on can hold, nor header sync needs.
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%d", now - memory))

local last = now
local newest = redis.call("ZREVRANGE", KEYS[1], 0, 0, "WITHSCORES")
if newest[2] then last = tonumber(newest[2]) end
local first = math.max(now, last, floor)
local start = first
local binding = 0
local sums = {0, 0}
local found = {false, false}

-- Walk back from the newest start, a chunk at a time, until every dimension has found
-- its binding start or left its window: O(starts within one window).
local offset = 0
local walking = true
while walking do
  local chunk = redis.call("ZREVRANGEBYSCORE", KEYS[1], string.format("%d", first),
                           string.format("(%d", first - longest), "WITHSCORES", "LIMIT", offset, 64)
  if #chunk == 0 then break end
  offset = offset + #chunk / 2
  for j = 1, #chunk, 2 do
    local s = tonumber(chunk[j + 1])
    local c = {window_units(chunk[j])}
    local active = false
    for d = 1, 2 do
      if not found[d] and s > first - windows[d] then
        sums[d] = sums[d] + c[d]
        if sums[d] > room[d] then
          found[d] = true
          if s + windows[d] > start then
            start = s + windows[d]
            binding = d
          end
        else
          active = true
        end
      end
    end
    if not active then
      walking = false
      break
    end
  end
end
if start > now and binding == 0 then binding = 1 end

-- Backfill: a request that fits a gap that earlier bookings left open before the last
-- start takes it, so small requests fill what a large one could not use. At t it must
-- fit every window holding t, counting starts on both sides of t:
--   max(sum over [s_k, s_k + window) for starts s_k in (t - window, t],
--       sum over [t, t + window)) + cost <= room + cost.
-- The earliest such t is the earliest start allowed (now, or the cooldown's end) or
-- the moment a start leaves a window (s_k + window). Only the next BACKFILL_MAX starts
-- are considered, so the work stays bounded.
local BACKFILL_MAX = 256
local lowest = math.max(now, floor)
local function backfill()
  local rows = redis.call("ZRANGEBYSCORE", KEYS[1], string.format("(%d", lowest - longest),
                          "+inf", "WITHSCORES", "LIMIT", 0, BACKFILL_MAX)
  local n = #rows / 2
  if n == 0 then return nil end
  local at, units = {}, {{}, {}}
  for j = 1, n do
    at[j] = tonumber(rows[2 * j])
    units[1][j], units[2][j] = window_units(rows[2 * j - 1])
  end
  -- Candidates must lie before the last start, and (when the set was cut short)
  -- a whole window before the last start fetched.
  local limit = last
  if n == BACKFILL_MAX and at[n] - longest < limit then limit = at[n] - longest end
  if lowest >= limit then return nil end
  local candidates = {lowest}
  for d = 1, 2 do
    for k = 1, n do
      local t = at[k] + windows[d]
      if t > lowest and t < limit then candidates[#candidates + 1] = t end
    end
  end
  table.sort(candidates)
  -- prefix[d][k]: units of the first k starts; ahead[d][k]: units in [at[k], at[k] + window).
  local prefix, ahead = {{[0] = 0}, {[0] = 0}}, {{}, {}}
  for d = 1, 2 do
    for k = 1, n do prefix[d][k] = prefix[d][k - 1] + units[d][k] end
    local e = 1
    for k = 1, n do
      if e < k then e = k end
      while e <= n and at[e] < at[k] + windows[d] do e = e + 1 end
      ahead[d][k] = prefix[d][e - 1] - prefix[d][k - 1]
    end
  end
  -- first index with at[] >= t (or > t when strict)
  local function index(t, strict)
    local lo, hi = 1, n + 1
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if at[mid] > t or (not strict and at[mid] == t) then hi = mid else lo = mid + 1 end
    end
    return lo
  end
  for _, t in ipairs(candidates) do
    local fits = true
    for d = 1, 2 do
      local from, to = index(t, false), index(t + windows[d], false)
      local most = prefix[d][to - 1] - prefix[d][from - 1]
      for k = index(t - windows[d], true), from - 1 do
        if ahead[d][k] > most then
          most = ahead[d][k]
          if most > room[d] then break end
        end
      end
      if most > room[d] then
        fits = false
        break
      end
    end
    if fits then return t end
  end
  return nil
end

local filled = nil
if start > lowest then filled = backfill() end
if filled ~= nil and filled < start and filled - now <= horizon then
  start = filled
  if start == now then binding = 0 end
else
  local backlog = math.max(last, floor) - now
  if start > now and backlog > horizon then
    return {2, now, start, backlog - horizon, binding}
  end
end

redis.call("ZADD", KEYS[1], string.format("%d", start), window_member(ARGV[1], ARGV[2], rid))
-- The set lives as long as its newest start needs it: a backfilled start lies before
-- `last`, and the bookings after it must not be forgotten.
redis.call("PEXPIRE", KEYS[1], math.floor((math.max(start, last) - now + memory) / 1000) + 1000)

if log_on then
  redis.call("RPUSH", KEYS[4], string.format("%d %s %s %s", start, ARGV[1], ARGV[2], rid))
  redis.call("LTRIM", KEYS[4], -log_max, -1)
end

if start > now then
  -- Single-use (see reserve.lua and redeem.lua).
  redis.call("SET", KEYS[5], "1", "PX",
             math.floor((start - now) / 1000) + tonumber(ARGV[12]))
  return {1, now, start, 0, binding}
end
return {0, now, now, 0, binding}
