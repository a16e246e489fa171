"""Shapes of the simulated nodes and the Node objects made from them (pure, no I/O).

kwok plays the kubelet of every node it manages; a node labelled
`scibox.io/real-runner=true` is left alone by kwok so that a later "real runner" can own
its pods (kwok runs with `--manage-nodes-with-label-selector=scibox.io/real-runner!=true`).

Every address here is inside 127.0.0.0/8: nodes get InternalIPs 127.0.1.x, so nothing that
follows a node's address can leave the machine.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

GPU_RESOURCE = "nvidia.com/gpu"
REAL_RUNNER_LABEL = "scibox.io/real-runner"
KWOK_NODE_SELECTOR = f"{REAL_RUNNER_LABEL}!=true"
NODE_IP_NETWORK = ipaddress.ip_network("127.0.1.0/24")
# Pod IPs kwok hands out; inside loopback so no traffic to a "pod" leaves the host.
POD_CIDR = "127.100.0.0/16"

H100_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/gpu.memory": "81559",
}

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$")


class NodeShapeError(ValueError):
    pass


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict, ...] = ()
    real_runner: bool = False  # True: kwok ignores this node, a real runner must own its pods

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise NodeShapeError(f"node name {self.name!r} is not a valid DNS label")
        for what, value in (("cpu", self.cpu), ("memory", self.memory), ("pods", self.pods)):
            if not isinstance(value, str) or not _QUANTITY.match(value):
                raise NodeShapeError(f"node {self.name}: {what}={value!r} is not a quantity")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise NodeShapeError(f"node {self.name}: gpus={self.gpus!r} must be an integer >= 0")

    def resources(self) -> dict[str, str]:
        res = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        if self.gpus:
            res[GPU_RESOURCE] = str(self.gpus)
        return res

    def all_labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        if self.gpus:
            labels["nvidia.com/gpu.count"] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
        if self.real_runner:
            labels[REAL_RUNNER_LABEL] = "true"
        labels.update(self.labels)
        return dict(sorted(labels.items()))


# Carried by nodes a real runner owns: only pods that tolerate it (and so ask to run for real)
# land there, never a simulated workload that happens to fit.
REAL_RUNNER_TAINT = {"key": REAL_RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}
REAL_RUNNER_TOLERATION = {"key": REAL_RUNNER_LABEL, "operator": "Equal", "value": "true",
                          "effect": "NoSchedule"}


def real_runner_node(name: str = "real-node-0", gpus: int = 2) -> NodeShape:
    """A node for `tools/localcluster/runner.py`: kwok leaves it alone, fake H100s so GPU pods fit,
    tainted so that only pods tolerating REAL_RUNNER_TOLERATION are placed on it."""
    return NodeShape(name, cpu="2", memory="16Gi", gpus=gpus, labels=dict(H100_LABELS),
                     taints=(dict(REAL_RUNNER_TAINT),), real_runner=True)


def default_nodes() -> list[NodeShape]:
    """Two 8-GPU H100 nodes and one CPU-only node."""
    return [
        NodeShape("gpu-node-0", cpu="96", memory="1Ti", gpus=8, labels=dict(H100_LABELS)),
        NodeShape("gpu-node-1", cpu="96", memory="1Ti", gpus=8, labels=dict(H100_LABELS)),
        NodeShape("cpu-node-0", cpu="32", memory="128Gi"),
    ]


def shapes_from_json(data) -> list[NodeShape]:
    """Node shapes from a parsed JSON list of objects with NodeShape's field names."""
    if not isinstance(data, list) or not data:
        raise NodeShapeError("node shapes must be a non-empty JSON list of objects")
    shapes = []
    known = set(NodeShape.__dataclass_fields__)
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise NodeShapeError(f"node shape #{i} is not an object")
        unknown = set(item) - known
        if unknown:
            raise NodeShapeError(f"node shape #{i}: unknown fields {sorted(unknown)}")
        item = dict(item)
        if "taints" in item:
            item["taints"] = tuple(item["taints"])
        try:
            shapes.append(NodeShape(**item))
        except TypeError as exc:
            raise NodeShapeError(f"node shape #{i}: {exc}") from None
    names = [s.name for s in shapes]
    if len(set(names)) != len(names):
        raise NodeShapeError(f"duplicate node names in {names}")
    if len(shapes) > NODE_IP_NETWORK.num_addresses - 2:
        raise NodeShapeError("too many nodes for 127.0.1.0/24")
    return shapes


def load_shapes(path: Path) -> list[NodeShape]:
    try:
        return shapes_from_json(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as exc:
        raise NodeShapeError(f"{path}: not JSON: {exc}") from None


def node_ip(index: int) -> str:
    return str(NODE_IP_NETWORK.network_address + 1 + index)


def node_manifest(shape: NodeShape, index: int) -> dict:
    """The Node object; status is accepted on create for Nodes, so capacity and the loopback
    InternalIP are set from the start and kwok's node-initialize stage keeps them."""
    resources = shape.resources()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "labels": shape.all_labels(),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": [dict(t) for t in shape.taints]} if shape.taints else {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "addresses": [
                {"type": "InternalIP", "address": node_ip(index)},
                {"type": "Hostname", "address": shape.name},
            ],
        },
    }
