-- Give a tenant its own metrics label while fewer than the maximum have one.
--
-- KEYS[1]  set of the tenants that have their own label
-- ARGV[1]  tenant
-- ARGV[2]  most tenants with their own label
--
-- Returns 1 when the tenant has (or now gets) its own label, 0 when it counts as
-- `other`. Check and add in one step, so concurrent workers never exceed the maximum.
local tenant = ARGV[1]
local most = tonumber(ARGV[2])

if redis.call("SISMEMBER", KEYS[1], tenant) == 1 then
    return 1
end
if redis.call("SCARD", KEYS[1]) < most then
    redis.call("SADD", KEYS[1], tenant)
    return 1
end
return 0
