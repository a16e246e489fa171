"""The optional NetworkPolicy in front of a model's server pods."""

from __future__ import annotations

import os
from typing import Any

from scibox_operator.api.spec import VLLMDeployment

from .common import SERVER, metadata, selector_labels
from .deployment import CONTAINER_PORT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATOR_NAMESPACE_ENV = "SCIBOX_OPERATOR_NAMESPACE"
MONITORING_NAMESPACE_ENV = "SCIBOX_MONITORING_NAMESPACE"


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}


def _setting(value: str | None, env: str) -> str:
    return value if value is not None else os.environ.get(env, "")


def _ingress_policy(vd: VLLMDeployment, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    """A NetworkPolicy over the model's server pods admitting exactly `ingress`."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(vd, vd.name, SERVER),
        "spec": {
            "podSelector": _own_pods(vd),
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _own_pods(vd: VLLMDeployment) -> dict[str, Any]:
    return {"matchLabels": selector_labels(vd, SERVER)}


def render_ray_policy(vd: VLLMDeployment) -> dict[str, Any]:
    """A multi-node group without the optional policy: Ray's head and workers listen without
    authentication, so every port but the model port is closed to all but the group's own pods;
    the model port stays open to whoever could reach it before."""
    return _ingress_policy(vd, [{"ports": [{"protocol": "TCP", "port": CONTAINER_PORT}]},
                                {"from": [{"podSelector": _own_pods(vd)}]}])


def render_network_policy(vd: VLLMDeployment, *, operator_namespace: str | None = None,
                          monitoring_namespace: str | None = None, multi_node: bool = False) -> dict[str, Any] | None:
    """None unless enabled (a multi-node group still gets render_ray_policy). Three ingress
    rules, nothing else:

    * the model port from the namespaces and pods the spec allows, and from the operator's own
      pods when their namespace is known (or its readiness probe would see every replica down);
    * every port between the model's own server pods: a multi-node group's Ray head, its object
      store and NCCL use ports of their own (Ray's are not authenticated: only the group reaches
      them);
    * the model port (vLLM's /metrics) from the monitoring namespace, when the administrator
      names one (SCIBOX_MONITORING_NAMESPACE), so Prometheus there can scrape.
    """
    policy = vd.spec.network_policy
    if not policy.enabled:
        return render_ray_policy(vd) if multi_node else None
    peer: dict[str, Any] = {"namespaceSelector": {"matchExpressions": [{
        "key": NAMESPACE_NAME_LABEL, "operator": "In",
        "values": sorted(set(policy.allowed_namespaces) or {vd.namespace})}]}}
    if policy.allowed_pod_labels:
        peer["podSelector"] = {"matchLabels": dict(sorted(policy.allowed_pod_labels.items()))}
    peers = [peer]
    operator_namespace = _setting(operator_namespace, OPERATOR_NAMESPACE_ENV)
    if operator_namespace:
        peers.append({**_namespace_peer(operator_namespace),
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "scibox-vllm-operator"}}})
    model_port = [{"protocol": "TCP", "port": CONTAINER_PORT}]
    ingress: list[dict[str, Any]] = [
        {"from": peers, "ports": model_port},
        {"from": [{"podSelector": _own_pods(vd)}]},  # no ports: all of them, within the group only
    ]
    monitoring_namespace = _setting(monitoring_namespace, MONITORING_NAMESPACE_ENV)
    if monitoring_namespace:
        ingress.append({"from": [_namespace_peer(monitoring_namespace)], "ports": model_port})
    return _ingress_policy(vd, ingress)
