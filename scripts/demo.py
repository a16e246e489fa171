"""The demo: local cluster + CRD + operator + a sample VLLMDeployment, then its status.

Leaves the cluster and the operator running and prints how to look around and stop them
(`python -m tests.cluster down`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import Cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sample", default=str(ROOT / "manifests" / "samples" / "api-key-model.yaml"))
    parser.add_argument("--namespace", default="demo")
    args = parser.parse_args()

    started = time.monotonic()
    cluster = Cluster.up()
    print(f"cluster up ({cluster.apiserver_url}); KUBECONFIG={cluster.kubeconfig}")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io")

    log = open(cluster.state_dir / "operator.log", "a")
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), SCIBOX_PROBE_ALLOWED_CIDRS="127.0.0.0/8",
               SCIBOX_HUB_ENDPOINT="http://127.0.0.1:9", SCIBOX_METRICS_ADDR="127.0.0.1", SCIBOX_METRICS_PORT="18080")
    operator = subprocess.Popen([sys.executable, "-m", "scibox_operator.cli", "run",
                                 "--liveness", "http://127.0.0.1:18081/healthz"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (cluster.state_dir / "operator.pid").write_text(str(operator.pid))
    print(f"operator running (pid {operator.pid}, log {cluster.state_dir / 'operator.log'})")

    cluster.kubectl("create", "namespace", args.namespace, check=False)
    cluster.kubectl("apply", "-n", args.namespace, "-f", args.sample)
    deadline = time.monotonic() + 120
    phase = None
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "vllmd", "-n", args.namespace, "-o", "json").stdout
        items = json.loads(out)["items"]
        phase = [(i["metadata"]["name"], (i.get("status") or {}).get("phase")) for i in items]
        if items and all(p in ("Deploying", "Ready", "Degraded", "Failed") for _, p in phase):
            break
        time.sleep(1)
    print(cluster.kubectl("get", "vllmd,deploy,svc,pvc,jobs,pods", "-n", args.namespace, "-o", "wide").stdout)
    for item in json.loads(cluster.kubectl("get", "vllmd", "-n", args.namespace, "-o", "json").stdout)["items"]:
        print(f"status of {item['metadata']['name']}:")
        print(json.dumps(item.get("status"), indent=2))
    print(f"demo took {time.monotonic() - started:.1f}s; stop with: kill {operator.pid}; "
          f"{sys.executable} -m tests.cluster down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
