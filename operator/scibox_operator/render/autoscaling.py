"""The autoscaler in front of a VLLMDeployment (pure): a KEDA ScaledObject with Prometheus
triggers when KEDA's CRDs are installed, else an autoscaling/v2 HorizontalPodAutoscaler on the
custom metrics API (prometheus-adapter, whose rules the chart ships).

Both target the VLLMDeployment itself through its scale subresource: the autoscaler writes
`spec.replicas`, and the operator renders the Deployment from it as from any other spec edit,
so the two never disagree about the replica count.
"""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import (
    API_VERSION,
    HPA_API_VERSION,
    KEDA_API_VERSION,
    KEDA_PAUSED_SCALE_IN,
    KIND,
    METRIC_DESIRED_REPLICAS,
    METRIC_KV_CACHE_USAGE,
    METRIC_READY_REPLICAS,
    METRIC_REQUESTS_FINISHED,
    METRIC_REQUESTS_WAITING,
)
from scibox_operator.api.spec import DEFAULT_WAITING_REQUESTS_PER_REPLICA as DEFAULT_WAITING
from scibox_operator.api.spec import Autoscaling, VLLMDeployment

from .common import SERVER, metadata


def _number(value: float) -> str:
    """A threshold as KEDA and Kubernetes quantities read it ("2", "0.8"), stable per value."""
    return str(int(value)) if value == int(value) else f"{value:.6f}".rstrip("0")


def _behavior(a: Autoscaling) -> dict[str, Any]:
    return {
        "scaleUp": {"stabilizationWindowSeconds": a.behavior.scale_up_stabilization_seconds,
                    "selectPolicy": "Max",
                    # one model load at a time is all a cluster of GPU nodes absorbs well
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": a.behavior.scale_down_stabilization_seconds,
                      "selectPolicy": "Max",
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
    }


def series_selector(vd: VLLMDeployment) -> str:
    """The PromQL label matcher of this VLLMDeployment's server series: the Service's name is
    the `service` label Prometheus-Operator puts on every series a ServiceMonitor scrapes."""
    return f'namespace="{vd.namespace}",service="{vd.name}"'


def scaled_object_name(vd: VLLMDeployment) -> str:
    return vd.name


def hpa_name(vd: VLLMDeployment) -> str:
    return vd.name


def _target_ref(vd: VLLMDeployment) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": vd.name}


def query_fallback(vd: VLLMDeployment) -> str:
    """What scales a VLLMDeployment whose raw query the admin does not allow."""
    a = vd.spec.autoscaling
    assert a is not None
    named = [f"waiting requests per replica {_number(a.target.waiting_requests_per_replica)}"
             if a.target.waiting_requests_per_replica is not None else "",
             f"KV-cache usage {_number(a.target.kv_cache_usage)}" if a.target.kv_cache_usage is not None else ""]
    return " and ".join(n for n in named if n) or \
        f"the default target, {_number(DEFAULT_WAITING)} waiting requests per replica"


def prometheus_triggers(vd: VLLMDeployment, server_address: str, allow_query: bool = False) -> list[dict[str, Any]]:
    """KEDA Prometheus triggers: each yields a value the HPA divides by its threshold per
    replica (AverageValue); the largest answer wins. A tenant's raw query only when the admin
    allows it (`allow_query`); otherwise the default waiting-requests target stands in when it
    was the only one."""
    a = vd.spec.autoscaling
    assert a is not None
    sel = series_selector(vd)
    triggers: list[dict[str, Any]] = []

    def trigger(name: str, query: str, threshold: float, activation: float | None = None) -> None:
        meta = {"serverAddress": server_address, "query": query, "threshold": _number(threshold),
                "ignoreNullValues": "true"}
        if activation is not None:
            meta["activationThreshold"] = _number(activation)
        triggers.append({"type": "prometheus", "name": name, "metricType": "AverageValue", "metadata": meta})

    zero = a.scale_to_zero is not None
    waiting = a.waiting_target
    query_only = a.target.waiting_requests_per_replica is None and a.target.kv_cache_usage is None
    if waiting is None and query_only and not allow_query:
        waiting = DEFAULT_WAITING
    if waiting is not None:
        trigger("waiting-requests", f"sum({METRIC_REQUESTS_WAITING}{{{sel}}})", waiting, 0 if zero else None)
    if a.target.kv_cache_usage is not None:
        # the average over replicas is what the HPA compares: sum here, AverageValue divides
        trigger("kv-cache-usage", f"sum({METRIC_KV_CACHE_USAGE}{{{sel}}})", a.target.kv_cache_usage,
                0 if zero else None)
    if a.target.query is not None and a.target.query_value is not None and allow_query:
        trigger("query", a.target.query, a.target.query_value, 0 if zero else None)
    if a.scale_to_zero is not None:
        # Activity: requests finished within half the idle window (KEDA's cool-down is the other
        # half). Its threshold is out of reach, so it never asks for more than one replica; above
        # 0 it keeps (or makes) the model active.
        trigger("recent-requests",
                f"sum(increase({METRIC_REQUESTS_FINISHED}{{{sel}}}[{idle_half(a)}s])) or vector(0)", 1e9, 0)
        # A wake under way (`kubectl scale` from 0, or the gateway raising spec.replicas): desired
        # above ready, from the operator's own per-object gauges, keeps KEDA from taking the
        # replicas straight back to zero while the model loads.
        own = f'vllmdeployment_namespace="{vd.namespace}",vllmdeployment="{vd.name}"'
        trigger("waking", f"(sum({METRIC_DESIRED_REPLICAS}{{{own}}}) - sum({METRIC_READY_REPLICAS}{{{own}}})) "
                          "or vector(0)", 1e9, 0)
    return triggers


def idle_half(a: Autoscaling) -> int:
    assert a.scale_to_zero is not None
    return max(15, (a.scale_to_zero.idle_seconds + 1) // 2)


def render_scaled_object(vd: VLLMDeployment, *, server_address: str, polling_seconds: int,
                         waking: bool = False, allow_query: bool = False) -> dict[str, Any]:
    """`waking`: replicas were asked for while none is ready (a wake from zero): KEDA's scale-in
    is paused until one is, or it would take them straight back to zero before its triggers
    (which lag by a scrape) see the wake."""
    a = vd.spec.autoscaling
    assert a is not None
    spec: dict[str, Any] = {
        "scaleTargetRef": _target_ref(vd),
        "pollingInterval": polling_seconds,
        "minReplicaCount": 0 if a.scale_to_zero is not None else a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"name": f"keda-hpa-{vd.name}", "behavior": _behavior(a)}},
        "triggers": prometheus_triggers(vd, server_address, allow_query),
    }
    if a.scale_to_zero is not None:
        # zero about idleSeconds after the last request: half in the query's window, half here
        spec["cooldownPeriod"] = idle_half(a)
    meta = metadata(vd, scaled_object_name(vd), SERVER)
    if waking and a.scale_to_zero is not None:
        meta["annotations"] = {KEDA_PAUSED_SCALE_IN: "true"}
    return {"apiVersion": KEDA_API_VERSION, "kind": "ScaledObject", "metadata": meta, "spec": spec}


def render_hpa(vd: VLLMDeployment) -> dict[str, Any]:
    """autoscaling/v2 on prometheus-adapter's custom metrics (the chart's rules name them
    `vllm_num_requests_waiting` and `vllm_kv_cache_usage_perc`, per pod)."""
    a = vd.spec.autoscaling
    assert a is not None
    def per_pod(metric: str, value: float) -> dict[str, Any]:
        return {"type": "Pods", "pods": {"metric": {"name": metric},
                                         "target": {"type": "AverageValue", "averageValue": _number(value)}}}

    metrics: list[dict[str, Any]] = []
    waiting = a.waiting_target
    if waiting is not None:
        metrics.append(per_pod("vllm_num_requests_waiting", waiting))
    if a.target.kv_cache_usage is not None:
        metrics.append(per_pod("vllm_kv_cache_usage_perc", a.target.kv_cache_usage))
    if not metrics:  # only a PromQL query was named, which the HPA cannot use (reported)
        metrics.append(per_pod("vllm_num_requests_waiting", DEFAULT_WAITING))
    return {"apiVersion": HPA_API_VERSION, "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(vd, hpa_name(vd), SERVER),
            "spec": {"scaleTargetRef": _target_ref(vd), "minReplicas": a.min_replicas,
                     "maxReplicas": a.max_replicas, "metrics": metrics, "behavior": _behavior(a)}}


def autoscaler_unsupported(vd: VLLMDeployment, *, keda: bool) -> str | None:
    """What the HPA path cannot do (it has no PromQL and no scale to zero without KEDA)."""
    a = vd.spec.autoscaling
    if a is None or keda:
        return None
    missing = []
    if a.scale_to_zero is not None:
        missing.append("autoscaling.scaleToZero")
    if a.target.query is not None:
        missing.append("autoscaling.target.query")
    if not missing:
        return None
    return (f"{' and '.join(missing)} need KEDA (keda.sh ScaledObject CRD not installed): the "
            f"HorizontalPodAutoscaler scales between minReplicas {a.min_replicas} and maxReplicas "
            f"{a.max_replicas} on the other targets")
