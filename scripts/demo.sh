#!/usr/bin/env bash
# README command one: set everything up (scripts/bootstrap.sh), then the demo (tools/demo.py):
# a local cluster whose node real-node-0 runs pods as real processes, the operator, a local hub
# mirror with a tiny model, and a VLLMDeployment that becomes an OpenAI endpoint answering a
# completion. The demo stays up afterwards; `scripts/demo.sh --down` stops all of it, and
# `scripts/demo.sh --once` runs it and stops everything at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SCIBOX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/scibox/venv}
if [ "${1:-}" != "--down" ]; then
  scripts/bootstrap.sh
fi
# This checkout's code, whichever checkout the cached venv's editable install points at.
export PYTHONPATH="$PWD/operator:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" tools/demo.py "$@"
