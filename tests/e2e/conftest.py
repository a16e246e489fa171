"""End-to-end fixtures: a private local cluster whose node `real-node-0` runs pods for real.

- `e2e_cluster` (session): a cluster of its own (name `e2e-<pid>`, stopped at the end) with one
  real-runner node (tools/localcluster/runner.py: fake GPUs, pods as local processes, pod IPs in
  127.200.0.0/16) and the VLLMDeployment CRD.
- `e2e_operator` (session): the operator as a real process against it; model metadata from the
  local hub mirror (`hub_mirror`, which serves `scibox/tiny-llama`).
- `e2e_namespace` (function): a fresh namespace, deleted afterwards.
- helpers: `E2E.wait_for`, `vllmd_body`, `diagnostics`.

Separate from the shared session cluster on purpose: an operator watches every namespace, and
another session's operator (with another hub mirror) must not reconcile these objects.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.fixtures.operator import CRD, GATEWAY_CRD, OperatorProcess
from tests.waiting import wait_for as poll
from tools.localcluster import Cluster
from tools.localcluster.nodes import REAL_RUNNER_TOLERATION, real_runner_node
from tools.localcluster.runner import marked_processes

REAL_NODE = "real-node-0"
REAL_NODE_GPUS = 4
API = "/apis/scibox.io/v1alpha1"


class E2E:
    def __init__(self, cluster: Cluster, node: str):
        self.cluster = cluster
        self.node = node
        self.rest = cluster.rest
        self.operator: OperatorProcess | None = None

    # --- reading --------------------------------------------------------------------------
    def vllmd(self, ns: str, name: str) -> dict | None:
        return self.rest.get_or_none(f"{API}/namespaces/{ns}/vllmdeployments/{name}")

    def condition(self, ns: str, name: str, type_: str) -> dict | None:
        body = self.vllmd(ns, name) or {}
        return next((c for c in (body.get("status") or {}).get("conditions") or []
                     if c.get("type") == type_), None)

    def pods(self, ns: str, selector: str = "") -> list[dict]:
        query = f"?labelSelector={selector}" if selector else ""
        return self.rest.get(f"/api/v1/namespaces/{ns}/pods{query}")["items"]

    def pod_processes(self) -> list[int]:
        """Live processes the runner started for pods of this cluster."""
        return marked_processes(self.cluster.state_dir, self.node)

    # --- waiting --------------------------------------------------------------------------
    def wait_for(self, what: str, probe, timeout: float, ns: str | None = None, every: float = 0.5):
        """Poll `probe()` until truthy and return it; on timeout fail with what the cluster,
        the runner and the operator say (a ceiling, not a performance assertion)."""
        try:
            return poll(what, probe, timeout, every=every)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + self.diagnostics(ns)) from None

    def diagnostics(self, ns: str | None) -> str:
        parts = []
        if ns:
            out = self.cluster.kubectl("get", "vllmd,deploy,job,pod,pvc", "-n", ns, "-o", "wide",
                                       check=False)
            parts.append(out.stdout + out.stderr)
            for item in (self.rest.get(f"{API}/namespaces/{ns}/vllmdeployments").get("items") or []):
                parts.append(json.dumps(item.get("status"), indent=1))
            for pod in self.pods(ns):
                parts.append(f"pod {pod['metadata']['name']}: "
                             f"{json.dumps(pod.get('status', {}).get('containerStatuses'))[:1500]}")
        parts.append("runner log:\n" + self.cluster.log_tail(f"runner-{self.node}", 30))
        for log in sorted((self.cluster.state_dir / "runner" / self.node / "logs").glob("*.log")):
            parts.append(f"{log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        if self.operator is not None:
            parts.append("operator log:\n" + self.operator.log_tail(30))
        return "\n".join(parts)


def vllmd_body(name: str, model: str, hub_endpoint: str | None, *, api_key_secret: str | None = None,
               deletion_policy: str = "Delete") -> dict:
    """A VLLMDeployment for the real-runner node: one fake GPU, CPU-sized engine settings
    (bf16, 256 tokens: what vLLM's CPU build serves here), the cache from the local mirror
    (`hub_endpoint`; None: the spec names no endpoint and the operator's setting must do, as on
    an air-gapped cluster)."""
    spec: dict = {
        "model": {"name": model, "servedModelName": name, "dtype": "bfloat16", "maxModelLen": 256},
        "resources": {"gpus": 1},
        "nodeSelector": {"scibox.io/real-runner": "true"},
        "tolerations": [dict(REAL_RUNNER_TOLERATION)],
        "cache": {"size": "1Gi", "deletionPolicy": deletion_policy,
                  **({"endpoint": hub_endpoint} if hub_endpoint else {})},
        "engine": {"maxNumSeqs": 4},
        "rollout": {"startupTimeoutSeconds": 900},
    }
    if api_key_secret:
        spec["auth"] = {"apiKeySecretRef": {"name": api_key_secret}}
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="session")
def e2e_cluster():
    name = os.environ.get("SCIBOX_E2E_CLUSTER") or f"e2e-{os.getpid()}"
    cluster = Cluster(name=name)
    # 4 fake GPUs: the gateway test runs three one-GPU servers (two models, one with 2 replicas).
    cluster.start(nodes=[real_runner_node(REAL_NODE, gpus=REAL_NODE_GPUS)])
    try:
        cluster.start_runner(REAL_NODE, gpus=REAL_NODE_GPUS)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD), "-f", str(GATEWAY_CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io",
                        "crd/vllmgateways.scibox.io", "--timeout=60s")
        yield E2E(cluster, REAL_NODE)
    finally:
        if cluster.started:
            cluster.down()  # stops the runner first: its pods' processes go with it
        else:
            cluster.stop_runner(REAL_NODE)


@pytest.fixture(scope="session")
def e2e_operator(e2e_cluster, hub_mirror, tmp_path_factory):
    proc = OperatorProcess(Path(e2e_cluster.cluster.kubeconfig), tmp_path_factory.mktemp("e2e-operator"),
                           hub_endpoint=hub_mirror.endpoint)
    proc.start()
    e2e_cluster.operator = proc
    yield proc
    proc.stop()
    e2e_cluster.operator = None


@pytest.fixture
def e2e_namespace(e2e_cluster):
    rest = e2e_cluster.rest
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    rest.delete(f"/api/v1/namespaces/{name}")
