"""A VLLMGateway's children (pure): vLLM's own router (`vllm-router`) in front of the server pods
of the VLLMDeployments it fronts, and what it needs to discover them.

- ServiceAccount + Role + RoleBinding: the router lists and watches pods of its own namespace,
  nothing else (`list`/`watch` on `pods`; no Secrets, no writes, no other namespace);
- Deployment: `vllm-router --enable-igw --service-discovery --selector ...` (multi-model mode:
  each discovered worker is registered under the model id it serves, so a request's `model`
  picks the worker set); probes on the router's /liveness and /health; a locked-down pod;
- Service: the one OpenAI base URL; port `metrics` for the router's Prometheus endpoint;
- ServiceMonitor (when its CRD exists): scrapes `metrics`.
"""

from __future__ import annotations

from typing import Any

from scibox_operator.api.gateway import VLLMGateway
from scibox_operator.api.names import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    OWNER_GATEWAY_LABEL,
    PART_OF_LABEL,
    ROUTER,
    SERVER,
)

from .common import container_security_context, pod_security_context
from .deployment import CONTAINER_PORT as SERVER_PORT

ROUTER_PORT = 8000
METRICS_PORT = 29000
# The router image's executable (images/router/Dockerfile: `pip install vllm-router==<pin>`).
ROUTER_COMMAND = "vllm-router"
# The environment variable holding the workers' API key; the argument names it as $(VAR), which
# the kubelet expands, so the key is never written into the pod spec.
API_KEY_ENV = "VLLM_ROUTER_API_KEY"
# Server pods only: the router must never register a download Job's pod as a worker.
WORKER_POD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: SERVER}
# The Role's only rule: what `--service-discovery` needs (a pod list + watch in one namespace;
# measured: the router discovers with no `get`). RBAC lets the operator grant only what it holds.
ROUTER_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def router_name(gw: VLLMGateway) -> str:
    return f"{gw.name}-router"


def service_name(gw: VLLMGateway) -> str:
    return gw.name


def gateway_labels(gw: VLLMGateway) -> dict[str, str]:
    return {NAME_LABEL: "vllm-router", INSTANCE_LABEL: gw.name, COMPONENT_LABEL: ROUTER, PART_OF_LABEL: "scibox",
            MANAGED_BY_LABEL: MANAGED_BY, OWNER_GATEWAY_LABEL: gw.name}


def gateway_selector(gw: VLLMGateway) -> dict[str, str]:
    """The immutable subset used in selectors."""
    return {INSTANCE_LABEL: gw.name, COMPONENT_LABEL: ROUTER}


def _metadata(gw: VLLMGateway, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": gw.namespace, "labels": gateway_labels(gw),
            "ownerReferences": [gw.owner_reference]}


def worker_selector(gw: VLLMGateway) -> dict[str, str]:
    """Labels a server pod must carry to be one of this gateway's workers: the operator's server
    pods, plus the gateway's matchLabels (server pods carry their VLLMDeployment's labels)."""
    return {**gw.spec.selector.match_labels, **WORKER_POD_LABELS}


def router_args(gw: VLLMGateway) -> list[str]:
    spec = gw.spec
    args = [
        "--host", "0.0.0.0",
        "--port", str(ROUTER_PORT),
        "--enable-igw",
        "--policy", spec.policy,
        "--service-discovery",
        "--selector", *(f"{k}={v}" for k, v in sorted(worker_selector(gw).items())),
        "--service-discovery-namespace", gw.namespace,
        "--service-discovery-port", str(SERVER_PORT),
        "--prometheus-host", "0.0.0.0",
        "--prometheus-port", str(METRICS_PORT),
    ]
    if spec.auth.api_key_secret_ref is not None:
        args += ["--api-key", f"$({API_KEY_ENV})"]
    return args


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def _placement(gw: VLLMGateway) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if gw.spec.node_selector:
        out["nodeSelector"] = dict(gw.spec.node_selector)
    if gw.spec.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in gw.spec.tolerations]
    return out


def render_router_deployment(gw: VLLMGateway, image: str) -> dict[str, Any]:
    spec = gw.spec
    env: list[dict[str, Any]] = []
    ref = spec.auth.api_key_secret_ref
    if ref is not None:
        env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": [ROUTER_COMMAND],
        "args": router_args(gw),
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
                      "limits": {"memory": spec.resources.memory}},
        "startupProbe": _probe("/liveness", 2, 30),
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/liveness", 10, 3),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env:
        container["env"] = env
    labels = gateway_labels(gw)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gw, router_name(gw)),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": gateway_selector(gw)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": router_name(gw),
                    # The router's Kubernetes discovery reads the pod list with this token.
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    **_placement(gw),
                },
            },
        },
    }


def render_router_service(gw: VLLMGateway) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gw, service_name(gw)),
        "spec": {
            "type": gw.spec.service.type,
            "selector": gateway_selector(gw),
            "ports": [{"name": "http", "port": gw.spec.service.port, "targetPort": "http", "protocol": "TCP"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def render_router_service_monitor(gw: VLLMGateway) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(gw, service_name(gw)),
        "spec": {
            "selector": {"matchLabels": gateway_selector(gw)},
            "namespaceSelector": {"matchNames": [gw.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": gw.spec.monitoring.interval,
                           "honorLabels": False}],
        },
    }


def render_router_service_account(gw: VLLMGateway) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(gw, router_name(gw)),
            "automountServiceAccountToken": False}


def render_router_role(gw: VLLMGateway) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _metadata(gw, router_name(gw)),
            "rules": [dict(rule) for rule in ROUTER_RULES]}


def render_router_role_binding(gw: VLLMGateway) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(gw, router_name(gw)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router_name(gw)},
        "subjects": [{"kind": "ServiceAccount", "name": router_name(gw), "namespace": gw.namespace}],
    }


def endpoint_url(gw: VLLMGateway) -> str:
    return f"http://{service_name(gw)}.{gw.namespace}.svc:{gw.spec.service.port}/v1"
