-- settle.lua: correct a reservation by its actual usage, once per reservation id.
--
-- KEYS[1]  TAT of the token bucket
-- KEYS[2]  settled marker of this reservation
-- ARGV[1]  token difference: actual - reserved (negative refunds)
-- ARGV[2]  microseconds per token
-- ARGV[3]  marker lifetime, seconds
--
-- Returns 1 when applied, 0 when this reservation was settled before.

if redis.replicate_commands then redis.replicate_commands() end

local delta = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])

if not redis.call("SET", KEYS[2], "1", "NX", "EX", ttl) then
  return 0
end
if delta == 0 then
  return 1
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call("GET", KEYS[1]) or now)
if tat < now then tat = now end

local new_tat = math.ceil(tat + delta * interval)
-- A refund cannot make the bucket fuller than full.
if new_tat <= now then
  redis.call("DEL", KEYS[1])
  return 1
end
redis.call("SET", KEYS[1], string.format("%d", new_tat), "PX",
           math.floor((new_tat - now) / 1000) + 1000)
return 1
