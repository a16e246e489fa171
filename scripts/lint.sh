#!/usr/bin/env bash
# The house rules, before the tests (scripts/test.sh): ruff, the import contracts in pyproject.toml,
# no import cycle in the package, and mypy --strict held to a baseline that may only shrink.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SCIBOX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/scibox/venv}
BIN=$VENV/bin
export PYTHONPATH="$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"
"$BIN/ruff" check operator tests tools scripts
"$BIN/lint-imports" --no-cache >/dev/null || "$BIN/lint-imports" --no-cache
"$BIN/python" tools/import_cycles.py scibox_operator
errors=$("$BIN/mypy" --no-error-summary operator/scibox_operator 2>/dev/null | grep -c ': error:' || true)
baseline=$(cat tools/mypy-baseline.txt)
if [ "$errors" -gt "$baseline" ]; then
  "$BIN/mypy" operator/scibox_operator || true
  echo "mypy --strict: $errors errors, more than the baseline of $baseline (tools/mypy-baseline.txt)" >&2
  exit 1
fi
echo "lint: ruff clean, import contracts kept, no import cycle, mypy --strict $errors errors (baseline $baseline)"
