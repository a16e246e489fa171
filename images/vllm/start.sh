#!/usr/bin/env bash
# Entry point of the SciBox vLLM image: builds vLLM's argv from config/vllm_config.yaml (path:
# VLLM_CONFIG) and the environment with settings.py -- over the operator's own argument contract
# (scibox_operator/engine, copied next to it) -- and execs the OpenAI-compatible server.  Extra
# arguments to this script are appended (they go through the same extra-args check).  VLLM_PYTHON
# picks the interpreter (default python3); SCIBOX_ENGINE_ARGS overrides the settings script's path.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${VLLM_PYTHON:-python3}"
SETTINGS_PY="${SCIBOX_ENGINE_ARGS:-$here/settings.py}"
CONFIG="${VLLM_CONFIG:-$here/config/vllm_config.yaml}"
SERVER_MODULE="${VLLM_SERVER_MODULE:-vllm.entrypoints.openai.api_server}"

if [ "$#" -gt 0 ]; then
  # Arguments given to the container join EXTRA_ARGS, so they are checked like them.
  EXTRA_ARGS="${EXTRA_ARGS:-} $(printf '%q ' "$@")"
  export EXTRA_ARGS
fi

config_arg=()
if [ -f "$CONFIG" ]; then
  config_arg=(--config "$CONFIG")
elif [ -n "${VLLM_CONFIG:-}" ]; then
  echo "start.sh: VLLM_CONFIG=$VLLM_CONFIG does not exist" >&2
  exit 2
fi

# NUL-separated tokens: no word splitting or globbing can change an argument.
args=()
argv_file="$(mktemp)"
trap 'rm -f "$argv_file"' EXIT
if ! "$PY" "$SETTINGS_PY" "${config_arg[@]}" --print-args >"$argv_file"; then
  echo "start.sh: refusing to start vLLM with invalid settings" >&2
  exit 2
fi
while IFS= read -r -d '' token; do args+=("$token"); done <"$argv_file"
rm -f "$argv_file"
trap - EXIT

# vLLM reads VLLM_PORT itself as the base of its internal ports; our VLLM_PORT is the HTTP port
# (already in argv), so leaving it set would make vLLM collide with its own listener.
unset VLLM_PORT VLLM_HOST

printf 'start.sh: exec %s -m %s' "$PY" "$SERVER_MODULE" >&2
printf ' %q' "${args[@]}" >&2
printf '\n' >&2
exec "$PY" -m "$SERVER_MODULE" "${args[@]}"
