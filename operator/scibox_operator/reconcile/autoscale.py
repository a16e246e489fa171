"""Which autoscaler a VLLMDeployment gets, and what status says about it (pure).

`spec.autoscaling` set: a KEDA ScaledObject when KEDA's CRD is established (detected at run
time, like ServiceMonitor), else an autoscaling/v2 HorizontalPodAutoscaler; unset (or the spec
drops it): neither, and a live one is removed. The autoscaler writes `spec.replicas` through the
VLLMDeployment's scale subresource; the operator only ever reads it, so they never fight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.serving_plan import GpuNode, ServingPlan, matching_gpu_nodes
from scibox_operator.render.autoscaling import (
    autoscaler_unsupported,
    hpa_name,
    query_fallback,
    render_hpa,
    render_scaled_object,
    scaled_object_name,
)

# Condition types this module adds to status.
AUTOSCALING_CONDITION = "AutoscalingCapacity"
AUTOSCALING_LIMITED = "AutoscalingLimited"
QUERY_NOT_ALLOWED = "QueryNotAllowed"


@dataclass(frozen=True)
class AutoscalingPrometheus:
    """Operator settings (config.py): the Prometheus KEDA's triggers query (never a tenant's
    choice: KEDA would send the queries), and KEDA's polling interval."""

    server_address: str = "http://prometheus-operated.monitoring.svc:9090"
    polling_seconds: int = 15
    allow_query: bool = False  # the admin's SCIBOX_AUTOSCALING_ALLOW_QUERY: tenants' raw PromQL


def autoscaler_keys(vd: VLLMDeployment) -> tuple[tuple[str, str], ...]:
    return (("HorizontalPodAutoscaler", hpa_name(vd)), ("ScaledObject", scaled_object_name(vd)))


def autoscaler_children(vd: VLLMDeployment, plan: ServingPlan, keda: bool, prometheus: AutoscalingPrometheus,
                        workload: dict[str, Any] | None = None) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(kind, name, object or None) for both kinds: None asks for the live one's removal.
    `workload`: the live Deployment, whose ready replicas say whether a wake is under way."""
    on = vd.spec.autoscaling is not None
    ready = int(((workload or {}).get("status") or {}).get("readyReplicas") or 0)
    # No replica ready, at zero too: a wake (`kubectl scale` from 0) then finds KEDA's scale-in
    # already paused; paused only once the operator saw the wake, KEDA's next poll (its triggers
    # a scrape behind) could take the replicas back to zero first.
    waking = ready == 0
    yield ("ScaledObject", scaled_object_name(vd),
           render_scaled_object(vd, server_address=prometheus.server_address,
                                polling_seconds=prometheus.polling_seconds, waking=waking,
                                allow_query=prometheus.allow_query) if on and keda else None)
    yield ("HorizontalPodAutoscaler", hpa_name(vd), render_hpa(vd) if on and not keda else None)


def replicas_that_fit(vd: VLLMDeployment, plan: ServingPlan, nodes: tuple[GpuNode, ...]) -> tuple[int, int]:
    """(replicas the matching GPU nodes can hold at once, their GPUs), counting whole pods per
    node, ignoring what other workloads use (an upper bound)."""
    matching = [n for n in matching_gpu_nodes(vd, list(nodes))
                if plan.gpu_product is None or n.product == plan.gpu_product]
    per_pod = max(1, plan.gpus_per_pod)
    pods = sum(n.gpus // per_pod for n in matching)
    return pods // max(1, plan.nodes), sum(n.gpus for n in matching)


def autoscaling_notes(vd: VLLMDeployment, plan: ServingPlan, nodes: tuple[GpuNode, ...], *,
                      keda: bool, allow_query: bool = False) -> list[tuple[str, str, str, str]]:
    """Conditions (type, status, reason, message): maxReplicas beyond the GPUs, and what the
    HPA path cannot do. Nothing at all without spec.autoscaling."""
    a = vd.spec.autoscaling
    if a is None:
        return []
    notes = []
    fit, gpus = replicas_that_fit(vd, plan, nodes)
    want = a.max_replicas * plan.gpus_per_replica
    if a.max_replicas > fit:
        notes.append((AUTOSCALING_CONDITION, "False", "MaxReplicasExceedGpus",
                      f"maxReplicas {a.max_replicas} x {plan.gpus_per_replica} GPUs per replica = {want} GPUs, "
                      f"but the matching nodes have {gpus} GPUs ({fit} replicas fit): replicas beyond {fit} "
                      "would stay Pending"))
    else:
        notes.append((AUTOSCALING_CONDITION, "True", "Fits",
                      f"maxReplicas {a.max_replicas} x {plan.gpus_per_replica} GPUs per replica = {want} GPUs "
                      f"fit the matching nodes' {gpus} GPUs"))
    limited = autoscaler_unsupported(vd, keda=keda)
    if limited is not None:
        notes.append((AUTOSCALING_LIMITED, "True", "NeedsKeda", limited))
    elif keda and a.target.query is not None and not allow_query:
        notes.append((AUTOSCALING_LIMITED, "True", QUERY_NOT_ALLOWED,
                      "autoscaling.target.query is not used: this cluster's operator does not send tenants' "
                      "PromQL to its Prometheus (the admin's setting SCIBOX_AUTOSCALING_ALLOW_QUERY); "
                      f"scaling uses {query_fallback(vd)}"))
    return notes
