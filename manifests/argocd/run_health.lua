-- Test harness: run health.lua the way Argo CD does, on one object, with Debian's Lua 5.1.
--   lua5.1 run_health.lua [--open-libs] health.lua object.lua
-- object.lua is a chunk returning the resource as a Lua table (tests/charts/argocd.py writes it
-- from YAML). health.lua sees `obj` and, like under Argo CD's default sandbox, only the base and
-- table libraries; --open-libs gives it every standard library, as argocd-cm's
-- resource.customizations.useOpenLibs.<group_kind>: "true" does. It must return a table whose
-- status is one of Argo CD's health codes. Prints status, a tab, the message.
local open_libs = arg[1] == "--open-libs"
local first = open_libs and 2 or 1
local script, object = arg[first], arg[first + 1]
if script == nil or object == nil then
  io.stderr:write("usage: lua5.1 run_health.lua [--open-libs] health.lua object.lua\n")
  os.exit(2)
end

local codes = { Unknown = true, Progressing = true, Suspended = true, Healthy = true, Degraded = true, Missing = true }
local check = assert(loadfile(script))
local env
if open_libs then
  env = setmetatable({}, { __index = _G })
else
  env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    rawequal = rawequal, rawget = rawget, rawset = rawset, select = select, setmetatable = setmetatable,
    getmetatable = getmetatable, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    xpcall = xpcall, table = table,
  }
end
env.obj = assert(loadfile(object))()
setfenv(check, env)
-- Strings keep their metatable in plain Lua: hide it so ("x"):match() fails as it does in Argo CD.
local string_meta = getmetatable("")
local saved_index = string_meta.__index
if not open_libs then
  string_meta.__index = nil
end
local ok, hs = pcall(check)
string_meta.__index = saved_index
if not ok then
  io.stderr:write("health.lua failed: " .. tostring(hs) .. "\n")
  os.exit(1)
end
if type(hs) ~= "table" then
  io.stderr:write("health.lua returned no table\n")
  os.exit(1)
end
if not codes[hs.status] then
  hs = { status = "Unknown", message = "Lua returned an invalid health status" }
end
io.write(hs.status, "\t", tostring(hs.message or ""), "\n")
