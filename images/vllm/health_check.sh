#!/usr/bin/env bash
# Health check for the vLLM server: exit 0 only when GET /health answers 200 AND GET /v1/models
# lists the served model (sending "Authorization: Bearer $VLLM_API_KEY" when the key is set).
# Target: HEALTH_HOST / HEALTH_PORT / HEALTH_MODEL when set, otherwise the same settings start.sh
# uses (settings.py over vllm_config.yaml and the environment), so the two never disagree.
# HEALTH_TIMEOUT: seconds per request (default 5). Prints one line saying what is wrong.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${VLLM_PYTHON:-python3}"
SETTINGS_PY="${SCIBOX_ENGINE_ARGS:-$here/settings.py}"
CONFIG="${VLLM_CONFIG:-$here/config/vllm_config.yaml}"

if [ -n "${HEALTH_HOST:-}" ] && [ -n "${HEALTH_PORT:-}" ] && [ -n "${HEALTH_MODEL:-}" ]; then
  host=$HEALTH_HOST port=$HEALTH_PORT model=$HEALTH_MODEL
else
  config_arg=()
  [ -f "$CONFIG" ] && config_arg=(--config "$CONFIG")
  if ! probe="$("$PY" "$SETTINGS_PY" "${config_arg[@]}" --print-probe)"; then
    echo "unhealthy: cannot resolve the server's settings (see above)"
    exit 2
  fi
  { read -r host; read -r port; read -r model; } <<<"$probe"
  host=${HEALTH_HOST:-$host} port=${HEALTH_PORT:-$port} model=${HEALTH_MODEL:-$model}
fi

exec "$PY" - "$host" "$port" "$model" "${HEALTH_TIMEOUT:-5}" <<'PYEOF'
import json, os, sys, urllib.error, urllib.request

host, port, model, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

def get(path, headers=None):
    request = urllib.request.Request(base + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()

try:
    status, _ = get("/health")
except urllib.error.HTTPError as exc:
    sys.exit(print(f"unhealthy: {base}/health answered {exc.code}") or 1)
except OSError as exc:
    sys.exit(print(f"unhealthy: {base}/health unreachable ({getattr(exc, 'reason', exc)})") or 1)
if status != 200:
    sys.exit(print(f"unhealthy: {base}/health answered {status}") or 1)

key = os.environ.get("VLLM_API_KEY")
try:
    status, body = get("/v1/models", {"Authorization": f"Bearer {key}"} if key else {})
    served = [entry.get("id") for entry in json.loads(body).get("data", [])]
except urllib.error.HTTPError as exc:
    hint = " (is VLLM_API_KEY the server's key?)" if exc.code == 401 else ""
    sys.exit(print(f"unhealthy: {base}/v1/models answered {exc.code}{hint}") or 1)
except (OSError, ValueError, AttributeError) as exc:
    sys.exit(print(f"unhealthy: {base}/v1/models failed ({exc})") or 1)
if model not in served:
    sys.exit(print(f"unhealthy: {base}/v1/models does not list {model!r} (serves {served})") or 1)
print(f"healthy: {base} serves {model!r}")
PYEOF
