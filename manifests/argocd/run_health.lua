-- Test harness: run health.lua the way Argo CD does, on one object.
--   lua5.1 run_health.lua health.lua object.lua
-- object.lua is a chunk returning the resource as a Lua table (tests/charts/argocd.py writes it
-- from YAML). health.lua runs with `obj` as its only global beside the base libraries Argo CD
-- opens; it must return a table with status and message. Prints status, a tab, the message.
local script, object = arg[1], arg[2]
if script == nil or object == nil then
  io.stderr:write("usage: lua5.1 run_health.lua health.lua object.lua\n")
  os.exit(2)
end

local check = assert(loadfile(script))
local env = {
  obj = assert(loadfile(object))(),
  ipairs = ipairs, pairs = pairs, next = next, type = type, tostring = tostring,
  tonumber = tonumber, select = select, unpack = unpack, error = error, pcall = pcall,
  string = string, table = table, math = math,
}
setfenv(check, env)
local ok, hs = pcall(check)
if not ok then
  io.stderr:write("health.lua failed: " .. tostring(hs) .. "\n")
  os.exit(1)
end
if type(hs) ~= "table" or type(hs.status) ~= "string" then
  io.stderr:write("health.lua returned no status\n")
  os.exit(1)
end
io.write(hs.status, "\t", tostring(hs.message or ""), "\n")
