"""The optional NetworkPolicy in front of the model port."""

from __future__ import annotations

import os
from typing import Any

from ..spec import VLLMDeployment
from .common import SERVER, metadata, selector_labels
from .deployment import CONTAINER_PORT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def render_network_policy(vd: VLLMDeployment, *, operator_namespace: str | None = None) -> dict[str, Any] | None:
    """None unless enabled. The operator's own pods are always let in when their namespace is
    known, or its readiness probe would report every replica as down."""
    policy = vd.spec.network_policy
    if not policy.enabled:
        return None
    peer: dict[str, Any] = {"namespaceSelector": {"matchExpressions": [{
        "key": NAMESPACE_NAME_LABEL, "operator": "In",
        "values": sorted(set(policy.allowed_namespaces) or {vd.namespace})}]}}
    if policy.allowed_pod_labels:
        peer["podSelector"] = {"matchLabels": dict(sorted(policy.allowed_pod_labels.items()))}
    peers = [peer]
    operator_namespace = operator_namespace if operator_namespace is not None else os.environ.get(
        "SCIBOX_OPERATOR_NAMESPACE")
    if operator_namespace:
        peers.append({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: operator_namespace}},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "scibox-vllm-operator"}}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(vd, vd.name, SERVER),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(vd, SERVER)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": CONTAINER_PORT}]}],
        },
    }
