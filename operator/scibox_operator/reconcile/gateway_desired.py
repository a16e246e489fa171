"""A VLLMGateway's pass, the pure part: what was observed -> the children it wants (stamped with
their render hash, like every VLLMDeployment child), the ones to remove, and its status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scibox_operator.api.conditions import make_condition
from scibox_operator.api.gateway import VLLMGateway
from scibox_operator.reconcile.diff import stamped
from scibox_operator.reconcile.status import Failure
from scibox_operator.render.gateway import (
    endpoint_url,
    render_router_deployment,
    render_router_role,
    render_router_role_binding,
    render_router_service,
    render_router_service_account,
    render_router_service_monitor,
    router_name,
    service_name,
)

ChildKey = tuple[str, str]
# Every kind a gateway renders, in the order a first apply needs them (the pod's account first).
GATEWAY_KINDS = ("ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor")


@dataclass(frozen=True)
class FrontedModel:
    """One VLLMDeployment the gateway's selector matches."""

    deployment: str
    model: str  # the served model name: what a request's `model` must say
    replicas: int
    ready_workers: int  # its server pods that are Ready (the ones the router routes to)


@dataclass(frozen=True)
class GatewayObserved:
    gateway: VLLMGateway
    models: tuple[FrontedModel, ...]
    router_image: str
    service_monitor_crd: bool
    # None: the spec names no API key Secret; False: it names one that is absent or lacks the key
    api_key_present: bool | None = None
    live: Mapping[ChildKey, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayDesired:
    children: tuple[dict[str, Any], ...]
    removals: tuple[ChildKey, ...]


def gateway_desired(observed: GatewayObserved) -> GatewayDesired:
    gw = observed.gateway
    children = [render_router_service_account(gw), render_router_role(gw), render_router_role_binding(gw),
                render_router_deployment(gw, observed.router_image), render_router_service(gw)]
    removals: list[ChildKey] = []
    monitor_key = ("ServiceMonitor", service_name(gw))
    if observed.service_monitor_crd and gw.spec.monitoring.service_monitor:
        children.append(render_router_service_monitor(gw))
    elif observed.service_monitor_crd and monitor_key in observed.live:
        removals.append(monitor_key)
    return GatewayDesired(tuple(stamped(c) for c in children), tuple(removals))


def _selector_text(gw: VLLMGateway) -> str:
    labels = gw.spec.selector.match_labels
    return ",".join(f"{k}={v}" for k, v in labels.items()) if labels else "(all)"


def _ready(observed: GatewayObserved, failure: Failure | None) -> tuple[str, str, str, str]:
    """(status, reason, message, phase) of the Ready condition."""
    gw = observed.gateway
    if failure is not None:
        return "False", failure.reason, failure.message, "Failed"
    ref = gw.spec.auth.api_key_secret_ref
    if ref is not None and observed.api_key_present is False:
        return ("False", "ApiKeySecretMissing",
                f"Secret {ref.name} with key {ref.key} (spec.auth.apiKeySecretRef) is not in namespace "
                f"{gw.namespace}: the router cannot start without the workers' API key; create it", "Failed")
    if not observed.models:
        return ("False", "NoMatchingDeployments",
                f"no VLLMDeployment in namespace {gw.namespace} matches spec.selector {_selector_text(gw)}: "
                "the gateway has no model to serve", "Pending")
    router = observed.live.get(("Deployment", router_name(gw))) or {}
    available = int((router.get("status") or {}).get("availableReplicas") or 0)
    if gw.spec.replicas == 0:
        return "False", "ScaledToZero", "spec.replicas is 0: no router runs", "Pending"
    if available == 0:
        return "False", "RouterUnavailable", f"no replica of the router Deployment {router_name(gw)} is available yet", \
            "Pending"
    waiting = [m.model for m in observed.models if m.ready_workers == 0]
    if len(waiting) == len(observed.models):
        return ("False", "NoReadyWorkers", "no fronted model has a ready server pod yet: " + ", ".join(waiting),
                "Pending")
    serving = [m.model for m in observed.models if m.ready_workers > 0]
    message = f"routing {', '.join(serving)} ({gw.spec.policy})"
    if waiting:
        message += f"; no ready worker yet for {', '.join(waiting)}"
    return "True", "Serving", message, "Ready"


def gateway_status(observed: GatewayObserved, current: Mapping[str, Any] | None, *, now: datetime,
                   failure: Failure | None = None) -> dict[str, Any]:
    gw = observed.gateway
    previous = next((c for c in (current or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    status, reason, message, phase = _ready(observed, failure)
    router = observed.live.get(("Deployment", router_name(gw))) or {}
    return {
        "observedGeneration": gw.generation,
        "phase": phase,
        "endpoint": endpoint_url(gw),
        "policy": gw.spec.policy,
        "routerReadyReplicas": int((router.get("status") or {}).get("readyReplicas") or 0),
        # one string for `kubectl get` (a printer column shows only the first item of a list)
        "servedModels": ",".join(m.model for m in observed.models),
        "models": [{"name": m.model, "deployment": m.deployment, "replicas": m.replicas,
                    "readyWorkers": m.ready_workers} for m in observed.models],
        "conditions": [make_condition("Ready", status, reason, message, now=now, previous=previous,
                                      observed_generation=gw.generation)],
    }


def invalid_gateway_status(generation: int, message: str, current: Mapping[str, Any] | None, *,
                           now: datetime) -> dict[str, Any]:
    previous = next((c for c in (current or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    return {"observedGeneration": generation, "phase": "Failed",
            "conditions": [make_condition("Ready", "False", "InvalidSpec", message, now=now, previous=previous,
                                          observed_generation=generation)]}


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
