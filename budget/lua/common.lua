-- common.lua: functions several scripts share, prepended to each script when it is
-- registered (store.py). Not a script of its own.

-- The AIMD factor (<= 1) of a deployment's rate state: the cut after a provider 429
-- (cooldown.lua writes `cut` and `cut_at`), regained with time since the cut.
local function aimd_factor(cut, cut_at, now, regain)
  if not cut then return 1 end
  local factor = tonumber(cut) + (now - tonumber(cut_at)) / 1000000 * regain
  if factor > 1 then return 1 end
  return factor
end

-- A window set member (window.lua): "tokens requests id". Built and read only here
-- (and in budget/window.py, for Python).
local function window_member(tokens, requests, id)
  return string.format("%s %s %s", tokens, requests, id)
end

local function window_units(member)
  local tok, req = string.match(member, "^(%d+) (%d+)")
  return tonumber(tok), tonumber(req)
end
