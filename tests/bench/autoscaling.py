"""Autoscaling timings on this machine (issue 22), printed as JSON.

    SCIBOX_E2E_CLUSTER=bench-autoscale python -m tests.bench.autoscaling

Runs tests/e2e/test_autoscaling_vllm.py (real vLLM CPU servers on the real-runner node, real
Prometheus, KEDA's operator and metrics adapter, kube-controller-manager's HPA controller) and
prints its timeline: load start -> scale decision -> second replica Ready -> second replica
serving, load stop -> back to 1, idle -> zero, wake (`kubectl scale` from 0) -> first completion.
Timings only, no thresholds: the test asserts behaviour, this prints speed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST = "tests/e2e/test_autoscaling_vllm.py"


def main() -> int:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'operator'}{os.pathsep}{ROOT}")
    env.setdefault("SCIBOX_E2E_CLUSTER", "bench-autoscale")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    match = re.search(r"autoscaling timeline (\{.*\})", proc.stdout)
    out = {
        "bench": "autoscaling",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "passed": proc.returncode == 0,
        "wall_s": round(time.monotonic() - started, 1),
        "timeline_s": json.loads(match.group(1)) if match else None,
    }
    if proc.returncode != 0:
        out["tail"] = (proc.stdout + proc.stderr)[-3000:]
    print(json.dumps(out, indent=1))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
