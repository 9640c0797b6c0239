-- window_push.lua: add usage the window limiter did not admit itself, at the back of
-- the line (never before any booked start), so that it can only delay admissions.
-- Used for header sync (the provider says less is left in its window than the gate's
-- own starts explain: someone else shares the quota), for extra usage found at settle
-- (accounting "actual").
--
-- KEYS[1]  the window set: members "tokens requests id", scored by start (see window.lua)
-- KEYS[2]  settled marker of a reservation (used only when ARGV[8] > 0)
-- ARGV[1]  tokens to add outright (extra usage found at settle; 0 for none)
-- ARGV[2]  tokens the provider reports left ("" = not reported)
-- ARGV[3]  requests the provider reports left ("" = not reported)
-- ARGV[4]  tokens allowed per token window
-- ARGV[5]  requests allowed per request window
-- ARGV[6]  token window, microseconds
-- ARGV[7]  request window, microseconds
-- ARGV[8]  settled marker lifetime, seconds (0 = no marker: not a settlement)
--
-- "Left" is read as what the provider's current window still admits. Its window holds
-- at most the gate's own starts of the last window (the provider's plus the guard), so
-- only usage beyond them is someone else's, and only that much is added.
--
-- Returns {now_us, moved}: moved is 1 when usage was added, else 0 (also for a
-- settlement seen before).

if redis.replicate_commands then redis.replicate_commands() end

local ttl = tonumber(ARGV[8])
if ttl > 0 and not redis.call("SET", KEYS[2], "1", "NX", "EX", ttl) then
  return {0, 0}
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowances = {tonumber(ARGV[4]), tonumber(ARGV[5])}
local windows = {tonumber(ARGV[6]), tonumber(ARGV[7])}
local longest = math.max(windows[1], windows[2])
local add = {tonumber(ARGV[1]), 0}

local reported = {ARGV[2], ARGV[3]}
if reported[1] ~= "" or reported[2] ~= "" then
  local used = {0, 0}
  local recent = redis.call("ZRANGEBYSCORE", KEYS[1], string.format("(%d", now - longest),
                            string.format("%d", now), "WITHSCORES")
  for i = 1, #recent, 2 do
    local tok, req = string.match(recent[i], "^(%d+) (%d+)")
    local s = tonumber(recent[i + 1])
    local c = {tonumber(tok), tonumber(req)}
    for d = 1, 2 do
      if s > now - windows[d] then used[d] = used[d] + c[d] end
    end
  end
  for d = 1, 2 do
    if reported[d] ~= "" then
      local others = allowances[d] - tonumber(reported[d]) - used[d]
      if others > 0 then add[d] = add[d] + math.ceil(others) end
    end
  end
end

if add[1] <= 0 and add[2] <= 0 then
  return {now, 0}
end
local at = now
local newest = redis.call("ZREVRANGE", KEYS[1], 0, 0, "WITHSCORES")
if newest[2] and tonumber(newest[2]) > at then at = tonumber(newest[2]) end
-- The id says whose usage it is and when it was seen: "n" someone else's (header
-- sync; the snapshot reads the neighbours' rate from these), "x" our own extra.
local whose = (reported[1] ~= "" or reported[2] ~= "") and "n" or "x"
local member = string.format("%d %d %s%d:%d", add[1], add[2], whose, now,
                             redis.call("ZCARD", KEYS[1]))
redis.call("ZADD", KEYS[1], string.format("%d", at), member)
redis.call("PEXPIRE", KEYS[1], math.floor((at - now + longest) / 1000) + 1000)
return {now, 1}
