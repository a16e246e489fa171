#!/usr/bin/env bash
# Model-cache downloader (the operator's download Job runs this). Fetches MODEL_ID at
# MODEL_REVISION into $CACHE_DIR/<org>--<name>/<revision> with huggingface_hub's
# snapshot_download: only the files vLLM loads, resumable, idempotent (completion marker).
# Details, environment and exit codes: download_model.py next to this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${VLLM_PYTHON:-python3}"
exec "$PY" "$here/download_model.py" "$@"
