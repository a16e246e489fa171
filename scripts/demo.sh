#!/usr/bin/env bash
# README command one: set up everything, bring up the local cluster, install the CRD, run the
# operator, apply a sample VLLMDeployment and show what it became.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
VENV=${SCIBOX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/scibox/venv}
exec "$VENV/bin/python" scripts/demo.py "$@"
