-- settle.lua: correct a reservation by its actual usage, once per reservation id.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  settled marker of this reservation
-- KEYS[3]  cooldown marker (Redis microseconds at which the provider cooldown ends)
-- ARGV[1]  token difference: actual - reserved (negative refunds)
-- ARGV[2]  microseconds per token
-- ARGV[3]  marker lifetime, seconds
-- ARGV[4]  token tolerance, microseconds
--
-- A refund never moves the bucket earlier than the end of an active cooldown plus
-- the burst (where the cooldown left it): a 429 storm's refunds must not undo it.
--
-- Returns 1 when applied, 0 when this reservation was settled before.

if redis.replicate_commands then redis.replicate_commands() end

local delta = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local tolerance = tonumber(ARGV[4])

if not redis.call("SET", KEYS[2], "1", "NX", "EX", ttl) then
  return 0
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call("GET", KEYS[1]) or now)
if tat < now then tat = now end

local new_tat = math.ceil(tat + delta * interval)
if delta < 0 then
  local cooling_until = tonumber(redis.call("GET", KEYS[3]) or 0)
  local floor = cooling_until + tolerance
  if cooling_until > now and new_tat < floor then new_tat = math.min(tat, floor) end
end
-- A refund cannot make the bucket fuller than full.
if new_tat <= now then
  redis.call("DEL", KEYS[1])
  return 1
end
redis.call("SET", KEYS[1], string.format("%d", new_tat), "PX",
           math.floor((new_tat - now) / 1000) + 1000)
return 1
