"""A LeaderWorkerSet for models larger than one node (vLLM's multi-node recipe).

Each replica is a group of `plan.nodes` pods: the leader starts the Ray head and then vLLM's
OpenAI server with the rendered arguments plus the Ray executor; the workers join the leader's
Ray cluster. Tensor parallelism stays inside a pod (a node), pipeline stages span the pods.
"""

from __future__ import annotations

import copy
import shlex
from typing import Any

from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.serving_plan import ServingPlan

from .common import SERVER, metadata
from .deployment import render_deployment

RAY_PORT = 6379
INSTALL_HINT = ("install the LeaderWorkerSet controller (sigs.k8s.io/lws v0.7.0): kubectl apply --server-side -f "
                "https://github.com/kubernetes-sigs/lws/releases/download/v0.7.0/manifests.yaml")


def _leader_command(args: list[str]) -> list[str]:
    # Ray must see every node's GPUs before vLLM sizes its workers, hence the wait loop.
    script = (
        f"ray start --head --port={RAY_PORT} --disable-usage-stats && "
        "until [ \"$(ray status 2>/dev/null | grep -c node_)\" -ge \"${LWS_GROUP_SIZE}\" ]; do sleep 2; done && "
        "exec python3 -m vllm.entrypoints.openai.api_server "
        + " ".join(shlex.quote(a) for a in args)
        + " --distributed-executor-backend=ray"
    )
    return ["/bin/sh", "-c", script]


WORKER_COMMAND = ["/bin/sh", "-c",
                  f"exec ray start --address=${{LWS_LEADER_ADDRESS}}:{RAY_PORT} --block --disable-usage-stats"]


def leader_worker_set_name(vd: VLLMDeployment) -> str:
    """Not the VLLMDeployment's name: LWS creates a headless Service named after itself for
    LWS_LEADER_ADDRESS, and that name is taken by the client Service."""
    return f"{vd.name}-group"


def render_leader_worker_set(vd: VLLMDeployment, plan: ServingPlan, *,
                             api_key_digest: str | None = None) -> dict[str, Any]:
    """Reuses the single-node pod template (security, volumes, env, probes), then adapts it."""
    base = render_deployment(vd, plan, api_key_digest=api_key_digest)
    template = base["spec"]["template"]
    leader = copy.deepcopy(template)
    worker = copy.deepcopy(template)

    lead_c = leader["spec"]["containers"][0]
    command = _leader_command(lead_c.pop("args"))
    lead_c["command"], lead_c["args"] = command[:2], command[2:]
    lead_c["ports"].append({"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"})

    work_c = worker["spec"]["containers"][0]
    work_c["name"] = "vllm-worker"
    work_c["command"] = WORKER_COMMAND[:2]
    work_c["args"] = WORKER_COMMAND[2:]
    work_c.pop("ports")
    # Workers serve no HTTP: the group's health is the leader's /health.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        work_c.pop(probe)

    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata(vd, leader_worker_set_name(vd), SERVER),
        "spec": {
            "replicas": vd.spec.replicas,
            # LeaderReady would deadlock: the leader's /health needs the workers.
            "startupPolicy": "LeaderCreated",
            # LWS's own defaults, written out so the drift check sees no difference.
            "rolloutStrategy": {"type": "RollingUpdate",
                                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0, "partition": 0}},
            "networkConfig": {"subdomainPolicy": "Shared"},
            "leaderWorkerTemplate": {
                "size": plan.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }
