-- window.lua: decide one request on every dimension at once (all or nothing), for a
-- provider that counts over fixed windows whose phase the client does not know (Azure).
--
-- The promise: for every interval of a window's length, at any phase, the starts
-- inside it cost at most the window's allowance. Starts are kept in one sorted set,
-- scored by start; each request starts no earlier than every start already there
-- (FIFO). A request of cost c may start at t >= every start in the list when,
-- on each dimension, the starts in (t - window, t] cost at most allowance - c: those
-- are all the starts that any interval of that length holding t can hold. The earliest
-- such t is exact: walking back from the newest start, the first start s at which the
-- running sum passes allowance - c must leave the window, so t = s + window.
--
-- The windows passed in are the provider's plus a guard band: a call that reaches the
-- provider up to the guard after its slot still lands where the gate counted it.
--
-- KEYS[1]  the window set: members "tokens requests id", scored by start (microseconds)
-- KEYS[2]  cooldown marker: nothing starts before this (Redis microseconds; missing = 0)
-- KEYS[3]  rate factor (0 < f <= 1; missing = 1), lowered by provider 429s
-- KEYS[4]  admission log (list), written only when ARGV[8] == "1"
-- ARGV[1]  token cost
-- ARGV[2]  request cost
-- ARGV[3]  tokens allowed per token window
-- ARGV[4]  requests allowed per request window
-- ARGV[5]  token window, microseconds (provider's window + guard)
-- ARGV[6]  request window, microseconds (provider's window + guard)
-- ARGV[7]  booking horizon, microseconds
-- ARGV[8]  "1" to append the admission to the log
-- ARGV[9]  longest admission log kept
-- ARGV[10] reservation id (for the log)
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
local rid = ARGV[10]

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(redis.call("GET", KEYS[2]) or 0)
local factor = tonumber(redis.call("GET", KEYS[3]) or 1)
local longest = math.max(windows[1], windows[2])

local room = {}
for d = 1, 2 do
  if costs[d] > allowances[d] then
    return {3, now, now, 0, d}
  end
  -- A lowered factor shrinks every window's allowance, leaving the rest to whoever
  -- else uses the quota, but never below this request: it may always run alone.
  local allow = allowances[d] * factor
  if allow < costs[d] then allow = costs[d] end
  room[d] = allow - costs[d]
end

-- Forget the starts that no window from now on can hold.
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", string.format("%d", now - longest))

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
    local tok, req = string.match(chunk[j], "^(%d+) (%d+)")
    local s = tonumber(chunk[j + 1])
    local c = {tonumber(tok), tonumber(req)}
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

local backlog = math.max(last, floor) - now
if start > now and backlog > horizon then
  return {2, now, start, backlog - horizon, binding}
end

redis.call("ZADD", KEYS[1], string.format("%d", start),
           string.format("%s %s %s", ARGV[1], ARGV[2], rid))
redis.call("PEXPIRE", KEYS[1], math.floor((start - now + longest) / 1000) + 1000)

if log_on then
  redis.call("RPUSH", KEYS[4], string.format("%d %s %s %s", start, ARGV[1], ARGV[2], rid))
  redis.call("LTRIM", KEYS[4], -log_max, -1)
end

if start > now then
  return {1, now, start, 0, binding}
end
return {0, now, now, 0, binding}
