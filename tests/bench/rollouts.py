"""Rollout benchmark on kwok GPU nodes (issue 20); prints JSON.

    SCIBOX_CLUSTER_NAME=NAME python -m tests.bench.rollouts

Starts (or reuses) the local cluster (default nodes: gpu-node-0/1, 8 H100 each), runs the
operator as a real process and, for `rollout.strategy: Auto`, changes an env value of
- `surge`: 2 replicas x 2 GPUs with 4 GPUs free,
- `one_at_a_time`: the same with the free GPUs taken by someone else's pod,
- `recreate`: 1 replica x 8 GPUs on a full node,
reporting per case the strategy status chose, edit -> RolledOut seconds, the least and most
ready/existing pods seen (sampled at least every second) and the capacity timeline.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures.cluster import apply_rwx_storage_class  # noqa: E402
from tests.fixtures.operator import CRD, OperatorProcess  # noqa: E402
from tests.operator.rollout_timeline import Timeline  # noqa: E402
from tests.operator.test_safe_rollouts import env_is, filler, stand_in  # noqa: E402
from tools.localcluster import Cluster  # noqa: E402


def _apply(cluster: Cluster, ns: str, body: dict) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))


def _case(cluster: Cluster, ns: str, name: str, *, replicas: int, tp: int, node: str) -> dict:
    rest = cluster.rest
    _apply(cluster, ns, stand_in(name, replicas=replicas, tp=tp, env="v1", node=node))
    Timeline(rest, ns, name, env_is("v1")).run_until(
        lambda s: s["ready_new"] == replicas and s["pods"] == replicas and s["progressing"] == "RolledOut",
        timeout=180)
    env = f"v{int(time.time())}"
    _apply(cluster, ns, stand_in(name, replicas=replicas, tp=tp, env=env, node=node))
    t = Timeline(rest, ns, name, env_is(env))
    t.run_until(lambda s: s["ready_new"] == replicas and s["pods"] == replicas and s["progressing"] == "RolledOut",
                timeout=180, every=0.25)
    first = next((i for i, s in enumerate(t.samples) if s["progressing"] != "RolledOut"), 0)
    return {"replicas": replicas, "gpus_per_replica": tp, "strategy": t.samples[-1]["strategy"],
            "edit_to_rolled_out_s": t.samples[-1]["t"], "min_ready": min(s["ready"] for s in t.samples),
            "max_pods": max(s["pods"] for s in t.samples), "samples": len(t.samples),
            "reasons": sorted({str(s["progressing"]) for s in t.samples[first:]}),
            "timeline": [[s["t"], s["ready_old"], s["ready_new"], s["pods"]] for s in t.samples]}


def main() -> int:
    cluster = Cluster(name=os.environ.get("SCIBOX_CLUSTER_NAME", "scibox"))
    cluster.start()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io")
    apply_rwx_storage_class(cluster)
    ns = f"bench-rollouts-{int(time.time())}"
    cluster.kubectl("create", "namespace", ns)
    operator = OperatorProcess(cluster.kubeconfig, Path(tempfile.mkdtemp(prefix="scibox-bench-rollouts-")),
                               hub_endpoint="http://127.0.0.1:9")
    operator.start()
    out: dict = {"timeline_columns": ["t_s", "ready_old", "ready_new", "pods"]}
    try:
        out["surge"] = _case(cluster, ns, "surge", replicas=2, tp=2, node="gpu-node-0")
        _apply(cluster, ns, filler("filler", "gpu-node-0", 4))
        time.sleep(2)  # the filler bound and counted
        out["one_at_a_time"] = _case(cluster, ns, "surge", replicas=2, tp=2, node="gpu-node-0")
        out["recreate"] = _case(cluster, ns, "single", replicas=1, tp=8, node="gpu-node-1")
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
