-- Argo CD health check for scibox.io/VLLMDeployment (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Reads what the operator writes: status.observedGeneration, status.phase, the Ready and UpToDate conditions
-- (reasons from scibox_operator/probe.py and status.py).
--   Healthy      the model answers on every wanted replica, or it is scaled to zero on purpose
--   Progressing  not yet observed, planning, downloading, pods starting, vLLM loading the model
--   Degraded     Failed, or replicas that will not heal by waiting (crashed engine, wrong API key,
--                model missing, completions failing)
-- Argo CD gives health scripts no `string` library unless argocd-cm sets
-- resource.customizations.useOpenLibs.scibox.io_VLLMDeployment: "true" (argocd-cm-health.yaml
-- does). Without it, a model with some replicas serving and others still loading shows Degraded
-- instead of Progressing: telling the two apart needs the Ready message's breakdown.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- Replicas still coming up are not a failure: vLLM loads weights and compiles for minutes.
local waiting_reasons = { Loading = true, Pending = true, WaitingForModelCache = true }

-- "1/2 replicas serving (1 Loading)": true when every replica not serving is only loading.
local function only_loading(message)
  if message == nil or string == nil then
    return false
  end
  local breakdown = string.match(message, "%(([^()]*)%)")
  if breakdown == nil then
    return false
  end
  local seen = false
  for _, reason in string.gmatch(breakdown, "(%d+) (%a+)") do
    if not waiting_reasons[reason] then
      return false
    end
    seen = true
  end
  return seen
end

local function ready_message(ready, fallback)
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    return ready.message
  end
  return fallback
end

local status = obj.status
local generation = (obj.metadata ~= nil and obj.metadata.generation) or 0

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile this VLLMDeployment"
  return hs
end

if status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
local phase = status.phase

local up_to_date = condition(status, "UpToDate")

if phase == "Ready" and up_to_date ~= nil and up_to_date.status == "False" then
  -- Serving, but a rollout of the current spec is still under way.
  hs.status = "Progressing"
  hs.message = ready_message(up_to_date, "Rolling out the current spec")
elseif phase == "Ready" then
  hs.status = "Healthy"
  hs.message = ready_message(ready, "All replicas serving")
elseif phase == "Stopped" then
  hs.status = "Healthy"
  hs.message = ready_message(ready, "Scaled to zero replicas")
elseif phase == "ScaledToZero" then
  -- The autoscaler stopped an idle model (scale to zero): nothing is wrong, it wakes on demand.
  hs.status = "Suspended"
  hs.message = ready_message(ready, "Scaled to zero while idle")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = ready_message(ready, "The operator cannot serve this model")
elseif phase == "Pending" or phase == "Downloading" then
  hs.status = "Progressing"
  local cached = condition(status, "ModelCached")
  hs.message = ready_message(cached, ready_message(ready, phase))
elseif phase == "Deploying" then
  -- No replica serves yet: waiting while the server loads, degraded once it crashed or is wrong.
  if ready == nil or waiting_reasons[ready.reason] then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = ready_message(ready, "Deploying")
elseif phase == "Degraded" then
  -- Some replicas serve, fewer than wanted.
  if ready ~= nil and only_loading(ready.message) then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = ready_message(ready, "Fewer replicas serving than wanted")
else
  hs.status = "Progressing"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
