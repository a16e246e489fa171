"""spec.autoscaling, pure: the typed model refuses bad bounds, desired() adds and removes the
HPA / KEDA ScaledObject, status reports the GPU guard rail and ScaledToZero (issue 22)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.planning.serving_plan import GpuNode, ServingPlan, cache_claim_name
from scibox_operator.readiness.verdicts import summarize_readiness
from scibox_operator.reconcile.autoscale import AutoscalingPrometheus
from scibox_operator.reconcile.desired import Observed, desired
from scibox_operator.reconcile.status import CacheState, compute_status, pod_selector
from scibox_operator.render.autoscaling import render_hpa, render_scaled_object

CACHED = CacheState(True, reason="Downloaded")
PROM = AutoscalingPrometheus("http://127.0.0.1:9090", 5)
H100 = (("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),)


def vd_of(autoscaling=None, replicas=1, gpus=1):
    spec = {"model": {"name": "org/model"}, "resources": {"gpus": gpus}, "replicas": replicas,
            "cache": {"accessMode": "ReadWriteMany"}}  # several replicas mount it
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return parse({"metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": 3}, "spec": spec})


def plan_of(vd, gpus=1):
    return ServingPlan(gpus, 1, gpus, "test", cache_claim_name(vd, True), True, "10Gi", "img:1", 1)


def observed(children=(), **kw):
    kw.setdefault("cache", CACHED)
    return Observed(children={(c["kind"], c["metadata"]["name"]): c for c in children},
                    autoscaling_prometheus=PROM, **kw)


def kinds(want):
    return {c["kind"] for c in want.children}


@pytest.mark.parametrize("autoscaling, words", [
    ({"minReplicas": 3, "maxReplicas": 2}, "above maxReplicas"),
    ({"minReplicas": -1, "maxReplicas": 2}, "minReplicas"),
    ({"maxReplicas": 0}, "maxReplicas"),
    ({"maxReplicas": 2, "target": {"waitingRequestsPerReplica": 0}}, "waitingRequestsPerReplica"),
    ({"maxReplicas": 2, "target": {"kvCacheUsage": 1.5}}, "kvCacheUsage"),
    ({"maxReplicas": 2, "target": {"query": "sum(x)"}}, "go together"),
    ({"maxReplicas": 2, "scaleToZero": {"idleSeconds": 0}}, "idleSeconds"),
])
def test_bad_autoscaling_is_refused_with_the_field(autoscaling, words):
    with pytest.raises(InvalidSpec) as err:
        vd_of(autoscaling)
    assert words in err.value.message


def test_without_keda_an_hpa_on_the_vllmdeployment_and_it_goes_when_the_spec_drops_autoscaling():
    vd = vd_of({"minReplicas": 1, "maxReplicas": 3, "target": {"kvCacheUsage": 0.8},
                "behavior": {"scaleDownStabilizationSeconds": 30}})
    want = desired(vd, plan_of(vd), observed())
    hpa = next(c for c in want.children if c["kind"] == "HorizontalPodAutoscaler")
    assert "ScaledObject" not in kinds(want)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "name": "m"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == ["vllm_kv_cache_usage_perc"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == "u1"
    # The Deployment takes spec.replicas (what the autoscaler wrote), never a number of its own.
    assert next(c for c in want.children if c["kind"] == "Deployment")["spec"]["replicas"] == 1

    plain = vd_of(None)
    again = desired(plain, plan_of(plain), observed([hpa]))
    assert ("HorizontalPodAutoscaler", "m") in again.removals
    assert "HorizontalPodAutoscaler" not in kinds(again)
    # nothing live, nothing to remove
    assert not [r for r in desired(plain, plan_of(plain), observed()).removals if r[0] == "HorizontalPodAutoscaler"]


def test_with_keda_a_scaled_object_replaces_the_hpa_and_both_render_byte_identical():
    vd = vd_of({"maxReplicas": 2, "scaleToZero": {"idleSeconds": 120}})
    hpa = render_hpa(vd)
    want = desired(vd, plan_of(vd), observed([hpa], scaled_object_crd=True))
    assert ("HorizontalPodAutoscaler", "m") in want.removals
    so = next(c for c in want.children if c["kind"] == "ScaledObject")
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 2
    queries = {t["name"]: t["metadata"]["query"] for t in so["spec"]["triggers"]}
    assert queries["waiting-requests"] == 'sum(vllm:num_requests_waiting{namespace="ns",service="m"})'
    assert "[60s]" in queries["recent-requests"] and so["spec"]["cooldownPeriod"] == 60
    assert 'vllmdeployment="m"' in queries["waking"]
    assert "vllm:request_success_total" in queries["recent-requests"] and "vllm:request_success_total" in queries["recent-requests"]
    assert all(t["metadata"]["serverAddress"] == PROM.server_address for t in so["spec"]["triggers"])
    assert desired(vd, plan_of(vd), observed([hpa], scaled_object_crd=True)) == want
    assert render_scaled_object(vd, server_address="x", polling_seconds=5) == \
        render_scaled_object(vd, server_address="x", polling_seconds=5)
    # KEDA goes away: back to an HPA, the ScaledObject removed
    back = desired(vd, plan_of(vd), observed([so]))
    assert ("ScaledObject", "m") in back.removals and "HorizontalPodAutoscaler" in kinds(back)
    # and the HPA path says what it cannot do
    assert any(n.type == "AutoscalingLimited" and "scaleToZero" in n.message for n in back.notes)


def test_without_scale_to_zero_keda_keeps_min_replicas_and_no_activity_trigger():
    vd = vd_of({"minReplicas": 2, "maxReplicas": 4, "target": {"waitingRequestsPerReplica": 3, "kvCacheUsage": 0.5}})
    so = render_scaled_object(vd, server_address="http://p", polling_seconds=5)
    assert so["spec"]["minReplicaCount"] == 2 and "cooldownPeriod" not in so["spec"]
    assert [(t["name"], t["metadata"]["threshold"]) for t in so["spec"]["triggers"]] == \
        [("waiting-requests", "3"), ("kv-cache-usage", "0.5")]
    assert all("activationThreshold" not in t["metadata"] for t in so["spec"]["triggers"])


def test_max_replicas_beyond_the_gpus_is_a_condition_with_the_numbers():
    vd = vd_of({"maxReplicas": 5}, gpus=2)
    nodes = (GpuNode("a", H100, 4), GpuNode("b", H100, 2))
    want = desired(vd, plan_of(vd, gpus=2), observed(gpu_nodes=nodes))
    note = next(n for n in want.notes if n.type == "AutoscalingCapacity")
    assert (note.status, note.reason) == ("False", "MaxReplicasExceedGpus")
    assert "maxReplicas 5 x 2 GPUs per replica = 10 GPUs" in note.message and "6 GPUs (3 replicas fit)" in note.message
    fits = vd_of({"maxReplicas": 3}, gpus=2)
    note = next(n for n in desired(fits, plan_of(fits, gpus=2), observed(gpu_nodes=nodes)).notes
                if n.type == "AutoscalingCapacity")
    assert note.status == "True"
    # Without autoscaling no note of its own (the rollout's Progressing is another concern's).
    assert not [n for n in desired(vd_of(None), plan_of(vd_of(None)), observed(gpu_nodes=nodes)).notes
                if n.type != "Progressing"]


def test_status_carries_the_selector_and_scaled_to_zero_is_not_a_failure():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    vd = vd_of({"maxReplicas": 2, "scaleToZero": {"idleSeconds": 60}}, replicas=0)
    status = compute_status(vd, current={}, now=now, plan=plan_of(vd), cache=CACHED, deployment={"status": {}},
                            readiness=summarize_readiness([], 0), probing=True)
    assert status["selector"] == pod_selector(vd) == "app.kubernetes.io/component=server,app.kubernetes.io/instance=m"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "ScaledToZero" and (ready["status"], ready["reason"]) == ("False", "ScaledToZero")
    stopped = compute_status(vd_of(None, replicas=0), current={}, now=now, plan=plan_of(vd), cache=CACHED,
                             deployment={"status": {}})
    assert stopped["phase"] == "Stopped"


def test_a_readwriteonce_cache_is_refused_up_front_when_autoscaling_may_add_replicas():
    from scibox_operator.reconcile.desired import cache_access_conflict
    vd = vd_of({"maxReplicas": 2})
    failure = cache_access_conflict(vd, plan_of(vd), ("ReadWriteOnce",))
    assert failure is not None and "autoscaling.maxReplicas 2" in failure.message
    assert cache_access_conflict(vd_of({"maxReplicas": 1}), plan_of(vd), ("ReadWriteOnce",)) is None
    assert cache_access_conflict(vd, plan_of(vd), ("ReadWriteMany",)) is None


def test_a_wake_from_zero_pauses_kedas_scale_in_until_a_replica_is_ready_and_the_pause_is_removed():
    from scibox_operator.api.names import KEDA_PAUSED_SCALE_IN
    vd = vd_of({"maxReplicas": 2, "scaleToZero": {"idleSeconds": 30}}, replicas=1)

    def so(ready):
        dep = {"kind": "Deployment", "metadata": {"name": "m"}, "status": {"readyReplicas": ready}}
        return next(c for c in desired(vd, plan_of(vd), observed([dep], scaled_object_crd=True)).children
                    if c["kind"] == "ScaledObject")
    assert so(0)["metadata"]["annotations"][KEDA_PAUSED_SCALE_IN] == "true"
    assert KEDA_PAUSED_SCALE_IN not in (so(1)["metadata"].get("annotations") or {})
    # at zero the pause is already on (it cannot hold anything in there), so a wake is never
    # undone by a KEDA poll before the operator has seen it
    idle = vd_of({"maxReplicas": 2, "scaleToZero": {"idleSeconds": 30}}, replicas=0)
    child = next(c for c in desired(idle, plan_of(idle), observed(scaled_object_crd=True)).children
                 if c["kind"] == "ScaledObject")
    assert child["metadata"]["annotations"][KEDA_PAUSED_SCALE_IN] == "true"
    # without scaleToZero there is nothing to pause
    plain = vd_of({"maxReplicas": 2}, replicas=1)
    child = next(c for c in desired(plain, plan_of(plain), observed(scaled_object_crd=True)).children
                 if c["kind"] == "ScaledObject")
    assert KEDA_PAUSED_SCALE_IN not in (child["metadata"].get("annotations") or {})


def test_a_tenants_raw_query_reaches_prometheus_only_when_the_admin_allows_it():
    # KEDA would run the query against the cluster's Prometheus and the HPA in the tenant's
    # namespace would show its answer: other tenants' metrics, unless the admin opts in.
    query = 'sum(rate(vllm:request_success_total{namespace="other"}[1m]))'
    vd = vd_of({"maxReplicas": 3, "target": {"query": query, "queryValue": 2}})
    allowed = AutoscalingPrometheus("http://127.0.0.1:9090", 5, allow_query=True)
    on = desired(vd, plan_of(vd), Observed(cache=CACHED, scaled_object_crd=True, autoscaling_prometheus=allowed))
    so = next(c for c in on.children if c["kind"] == "ScaledObject")
    assert [(t["name"], t["metadata"]["query"]) for t in so["spec"]["triggers"]] == [("query", query)]
    assert not any(n.reason == "QueryNotAllowed" for n in on.notes)
    # The admin's default: the query is gone from the live ScaledObject's next render, the
    # default waiting-requests target stands in, and status says why.
    off = desired(vd, plan_of(vd), observed([so], scaled_object_crd=True))
    so_off = next(c for c in off.children if c["kind"] == "ScaledObject")
    assert [t["name"] for t in so_off["spec"]["triggers"]] == ["waiting-requests"]
    assert all(query not in t["metadata"]["query"] for t in so_off["spec"]["triggers"])
    note = next(n for n in off.notes if n.reason == "QueryNotAllowed")
    assert note.type == "AutoscalingLimited" and "SCIBOX_AUTOSCALING_ALLOW_QUERY" in note.message \
        and "2 waiting requests per replica" in note.message
    # A named target besides the query keeps scaling on that one alone.
    both = vd_of({"maxReplicas": 3, "target": {"query": query, "queryValue": 2, "kvCacheUsage": 0.7}})
    so_both = next(c for c in desired(both, plan_of(both), observed(scaled_object_crd=True)).children
                   if c["kind"] == "ScaledObject")
    assert [t["name"] for t in so_both["spec"]["triggers"]] == ["kv-cache-usage"]
