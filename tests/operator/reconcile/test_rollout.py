"""decide_rollout (pure): the strategy from free GPUs, the announced recreate, stickiness, the
rollback memory on the workload, the operator-upgrade queue. The same cases run on a real cluster
in tests/operator/test_safe_rollouts.py and test_rollback_vllm.py."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

from scibox_operator.api.names import FAILED_TEMPLATE_ANNOTATION, LAST_GOOD_TEMPLATE_ANNOTATION, ROLLOUT_ANNOTATION
from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import GpuNode, ServingPlan, cache_claim_name
from scibox_operator.reconcile.desired import Observed, desired
from scibox_operator.reconcile.rollout import (
    Capacity,
    RolloutInputs,
    capacity,
    crash_reason,
    decide_rollout,
    pod_gpu_request,
    strategy_fields,
    template_digest,
)
from scibox_operator.reconcile.rollout_slots import OperatorRolloutSlots
from scibox_operator.reconcile.status import CacheState
from scibox_operator.render.deployment import render_deployment

NOW = datetime(2026, 1, 1, tzinfo=UTC)
H100 = (("nvidia.com/gpu.product", "H100"),)


def vd_of(generation=1, replicas=2, env="v1", **rollout):
    spec = {"model": {"name": "org/model"}, "replicas": replicas, "resources": {"gpus": 2},
            "engine": {"env": [{"name": "ROLL", "value": env}]}, "rollout": rollout}
    return parse({"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
                  "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": generation}, "spec": spec})


def plan_of(vd):
    return ServingPlan(2, 1, 2, "test", cache_claim_name(vd, True), True, "1Gi", "img:1", 1, gpu_product="H100")


def free(*per_node):
    return Capacity(tuple((f"n{i}", f) for i, f in enumerate(per_node)))


def done_status(obj, replicas):
    obj = copy.deepcopy(obj)
    obj["metadata"]["generation"] = 1
    obj["status"] = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                     "readyReplicas": replicas}
    return obj


def decide(vd, live, **inputs):
    return decide_rollout(vd, plan_of(vd), render_deployment(vd, plan_of(vd)), live,
                          RolloutInputs(now=inputs.pop("now", NOW), **inputs))


def served(vd, **inputs):
    """The live workload after `vd`'s template rolled out."""
    first = decide(vd, None, capacity=free(8), **inputs)
    return done_status(first.workload, vd.spec.replicas)


def test_free_gpus_are_allocatable_minus_what_bound_pods_request_on_the_plans_nodes():
    nodes = [GpuNode("a", H100, 8), GpuNode("b", H100, 8), GpuNode("c", (("nvidia.com/gpu.product", "A100"),), 8)]
    vd = vd_of()
    cap = capacity(vd, plan_of(vd), nodes, {"a": 8, "b": 6, "c": 0})
    assert cap.free_by_node == (("a", 0), ("b", 2))  # c is another product
    assert cap.room_for_replica(2, 1) and not cap.room_for_replica(3, 1)
    # A nodeSelector key beyond GPU Feature Discovery's labels is checked against every label.
    picky = parse({"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
                   "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1},
                   "spec": {"model": {"name": "org/model"}, "nodeSelector": {"pool": "x"}}})
    labels = {"a": {"pool": "y"}, "b": {"pool": "x"}, "c": {"pool": "x"}}
    assert capacity(picky, plan_of(picky), nodes, {"b": 6}, labels).free_by_node == (("b", 2),)
    assert capacity(picky, plan_of(picky), nodes, {}, {}).free_by_node == ()
    pod = {"spec": {"nodeName": "a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
           "status": {"phase": "Running"}}
    assert pod_gpu_request(pod) == ("a", 4)
    assert pod_gpu_request({**pod, "status": {"phase": "Succeeded"}}) is None
    assert pod_gpu_request({**pod, "spec": {**pod["spec"], "nodeName": None}}) is None


def test_auto_surges_with_room_one_at_a_time_without_and_announces_a_recreate_for_one_replica():
    v1, v2 = vd_of(), vd_of(generation=2, env="v2")
    live = served(v1)
    surge = decide(v2, live, capacity=free(2))
    assert surge.state == "Rolling" and surge.status["strategy"] == "Surge"
    assert surge.workload["spec"]["strategy"] == {"type": "RollingUpdate",
                                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    tight = decide(v2, live, capacity=free(1, 1))
    assert tight.status["strategy"] == "OneAtATime"
    assert tight.workload["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert "n0 1 free, n1 1 free" in tight.condition[3]

    one1, one2 = vd_of(replicas=1), vd_of(generation=2, replicas=1, env="v2")
    live = served(one1)
    first = decide(one2, live, capacity=free(0))
    assert first.workload is None and first.state == "Announcing", "the pod must not go before the warning"
    assert first.condition[2] == "RecreateWithoutSpareGPUs" and "n0 0 free" in first.condition[3]
    then = decide(one2, live, capacity=free(0), announced=first.status["announcedRecreate"])
    assert then.workload["spec"]["strategy"] == {"type": "Recreate"}


def test_the_strategy_sticks_for_the_rollout_of_a_template_even_when_the_surge_took_the_gpus():
    v1, v2 = vd_of(), vd_of(generation=2, env="v2")
    started = decide(v2, served(v1), capacity=free(2))
    live = copy.deepcopy(started.workload)
    live["status"] = {"observedGeneration": 0, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2}
    later = decide(v2, live, capacity=free(0), now=NOW + timedelta(seconds=5))
    assert later.workload == started.workload, "a pass during the rollout must write nothing new"
    assert later.status["strategy"] == "Surge" and later.condition[2] == "RollingOut"


def test_a_template_that_is_not_ready_in_time_is_rolled_back_and_not_retried():
    v1, v2 = vd_of(startupTimeoutSeconds=60), vd_of(generation=2, env="v2", startupTimeoutSeconds=60)
    good = served(v1)
    good_template = good["spec"]["template"]
    rolling = decide(v2, good, capacity=free(2))
    live = copy.deepcopy(rolling.workload)
    live["status"] = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2}
    live["metadata"]["generation"] = 2
    crash = {"metadata": {"name": "m-new"}, "status": {"containerStatuses": [{
        "name": "vllm", "ready": False, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                                     "message": "error: unrecognized arguments: --bogus"}}}]}}
    assert "exit code 2" in (crash_reason((crash,)) or "")
    waiting = decide(v2, live, capacity=free(0), now=NOW + timedelta(seconds=30), pods=(crash,))
    assert waiting.state == "Rolling"
    back = decide(v2, live, capacity=free(0), now=NOW + timedelta(seconds=61), pods=(crash,))
    assert back.state == "RolledBack" and back.condition[2] == "RolledBack"
    assert back.workload["spec"]["template"] == good_template
    failed = json.loads(back.workload["metadata"]["annotations"][FAILED_TEMPLATE_ANNOTATION])
    assert failed["generation"] == 2 and "unrecognized arguments" in failed["reason"]
    assert failed["cause"] == "spec" and not back.holds_slot  # only a failed upgrade holds the queue
    # Every later pass (another operator process: everything is read from the workload) stays.
    after = copy.deepcopy(back.workload)
    after["status"] = {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    again = decide(v2, after, capacity=free(2), now=NOW + timedelta(hours=1))
    assert again.workload == back.workload and again.state == "RolledBack"
    # A spec change renders another template: that one gets its chance.
    v3 = vd_of(generation=3, env="v3", startupTimeoutSeconds=60)
    retry = decide(v3, after, capacity=free(2))
    assert retry.state == "Rolling" and FAILED_TEMPLATE_ANNOTATION not in retry.workload["metadata"]["annotations"]
    kept = json.loads(retry.workload["metadata"]["annotations"][LAST_GOOD_TEMPLATE_ANNOTATION])
    assert kept["template"] == json.loads(after["metadata"]["annotations"][ROLLOUT_ANNOTATION])["template"]


def test_a_template_change_the_spec_did_not_cause_waits_for_a_slot():
    v1 = vd_of()
    live = served(v1)
    # Same generation, plan and key, another rendering (the operator's default image changed).
    newer = decide_rollout(v1, plan_of(v1), render_deployment(v1, ServingPlan(
        2, 1, 2, "test", cache_claim_name(v1, True), True, "1Gi", "img:2", 1, gpu_product="H100")), live,
        RolloutInputs(now=NOW, capacity=free(8), slot=False, queue=("ns/other", "ns/m"), rolling=("ns/x",)))
    assert newer.workload is None and newer.state == "Queued" and newer.status["queuePosition"] == 2
    assert "rolling now: ns/x" in newer.condition[3]
    spec_edit = decide(vd_of(generation=2, env="v2"), live, capacity=free(8), slot=False)
    assert spec_edit.state == "Rolling", "a spec edit never queues"

    slots = OperatorRolloutSlots(limit=1)
    slots._seeded = True
    a, b = ("ns", "a"), ("ns", "b")
    assert slots.view(a)[0]
    slots.update(a, decide(v1, live, capacity=free(8)).__class__(None, ("", "", "", ""), {}, "operator", "Rolling"))
    assert not slots.view(b)[0]
    slots.update(b, newer)
    assert slots.release(a) == [b] and slots.view(b)[0]
    # A failed upgrade keeps its slot: the next VLLMDeployment does not get the bad rendering.
    broken = newer.__class__(None, ("", "", "", ""), {"failedTemplate": {"cause": "operator"}}, "rollback",
                             "RolledBack")
    slots.update(b, broken)
    assert not slots.view(a)[0] and slots.view(b)[0]


def test_an_unchanged_template_restarts_nothing_and_an_equal_pass_renders_the_same():
    vd = vd_of()
    live = served(vd)
    same = decide(vd, live, capacity=free(0), now=NOW + timedelta(days=3), completed=None)
    assert same.workload["spec"]["template"] == live["spec"]["template"]
    assert same.state == "Done" and same.status["completedTemplate"] == template_digest(live["spec"]["template"])
    # desired() as `scibox-operator render` calls it (no time, no live objects): byte-identical.
    obs = Observed(cache=CacheState(True, reason="Downloaded"))
    assert desired(vd, plan_of(vd), obs) == desired(vd, plan_of(vd), obs)


def test_leader_worker_sets_roll_with_their_own_fields():
    vd = vd_of()
    assert strategy_fields("LeaderWorkerSet", "Surge", vd) == {"rolloutStrategy": {
        "type": "RollingUpdate", "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 1, "partition": 0}}}
    assert strategy_fields("LeaderWorkerSet", "OneAtATime", vd)["rolloutStrategy"]["rollingUpdateConfiguration"][
        "maxUnavailable"] == 1
    explicit = vd_of(strategy="RollingUpdate", maxSurge=2, maxUnavailable=1)
    assert strategy_fields("Deployment", "RollingUpdate", explicit)["strategy"]["rollingUpdate"] == {
        "maxSurge": 2, "maxUnavailable": 1}


def test_a_spec_edit_that_keeps_the_template_writes_nothing_on_the_workload_and_upgrades_still_queue():
    """A Deployment's annotations count as its spec (a write bumps its generation): a spec edit
    that renders the same template (e.g. a LoRA adapter added) leaves them as they are; what it
    moved is kept in status.rollout.inputs, so the operator's next own change still queues."""
    v1 = vd_of()
    live = served(v1)
    v2 = vd_of(generation=2)  # same template, another generation
    same = decide(v2, live, capacity=free(8))
    assert same.state == "Done"
    assert same.workload["metadata"]["annotations"] == live["metadata"]["annotations"]
    assert same.status["inputs"] != decide(v1, live, capacity=free(8)).status["inputs"]
    upgrade = decide_rollout(v2, plan_of(v2), render_deployment(v2, ServingPlan(
        2, 1, 2, "test", cache_claim_name(v2, True), True, "1Gi", "img:2", 1, gpu_product="H100")), live,
        RolloutInputs(now=NOW, capacity=free(8), slot=False, kept_inputs=same.status["inputs"]))
    assert upgrade.state == "Queued" and upgrade.workload is None
    # without the kept inputs the same change would pass for a spec edit (the old behaviour's gap)
    unknown = decide_rollout(v2, plan_of(v2), render_deployment(v2, ServingPlan(
        2, 1, 2, "test", cache_claim_name(v2, True), True, "1Gi", "img:2", 1, gpu_product="H100")), live,
        RolloutInputs(now=NOW, capacity=free(8), slot=False))
    assert unknown.state == "Rolling"


def test_a_template_the_prober_saw_serving_is_kept_before_the_workload_controller_counts_it_ready():
    # The prober said Serving a probe period before the pod's Ready condition: an edit in that
    # gap still has a template to return to. Without the prober's word it has none.
    v1, v2 = vd_of(replicas=1), vd_of(generation=2, replicas=1, env="v2")
    live = served(v1)
    live["status"]["readyReplicas"] = 0
    blind = decide(v2, live, capacity=free(2))
    assert LAST_GOOD_TEMPLATE_ANNOTATION not in blind.workload["metadata"]["annotations"]
    seen = decide(v2, live, capacity=free(2), prober_ready=1)
    kept = json.loads(seen.workload["metadata"]["annotations"][LAST_GOOD_TEMPLATE_ANNOTATION])
    assert kept["body"] == live["spec"]["template"]
    # Old replicas still running: the prober's count may be theirs, so it proves nothing.
    live["status"].update(replicas=2, updatedReplicas=1)
    assert LAST_GOOD_TEMPLATE_ANNOTATION not in decide(v2, live, capacity=free(2), prober_ready=1) \
        .workload["metadata"]["annotations"]


def test_an_announced_recreate_keeps_what_served_and_rolls_back_to_it():
    v1 = vd_of(replicas=1, startupTimeoutSeconds=60)
    v2 = vd_of(generation=2, replicas=1, env="v2", startupTimeoutSeconds=60)
    live = served(v1)
    live["status"]["readyReplicas"] = 0  # kube's readiness lags; status remembers the completion
    first = served(v1)
    done = decide(v1, first, capacity=free(0))
    completed = done.status["completedTemplate"]
    announce = decide(v2, live, capacity=free(0), may_surge=False, completed=completed)
    assert announce.state == "Announcing" and announce.workload is None
    assert announce.status["completedTemplate"] == completed  # the announce pass's status keeps it
    going = decide(v2, live, capacity=free(0), may_surge=False, completed=completed,
                   announced=announce.status["announcedRecreate"])
    assert going.state == "Rolling" and going.workload["spec"]["strategy"] == {"type": "Recreate"}
    rolling = copy.deepcopy(going.workload)
    rolling["metadata"]["generation"] = 2
    rolling["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}
    back = decide(v2, rolling, capacity=free(0), may_surge=False, now=NOW + timedelta(seconds=61))
    assert back.state == "RolledBack" and back.workload["spec"]["template"] == live["spec"]["template"]


def test_a_spec_edit_announced_as_a_recreate_is_still_the_specs_on_the_next_pass():
    # The announce pass applies nothing: had it recorded the edit's inputs, the next pass would
    # see nothing moved since, call the rollout operator-caused and queue it (the apiserver fault
    # test: four of five edits never rolled while another model held the upgrade slot).
    v1, v2 = vd_of(replicas=1), vd_of(generation=2, replicas=1, env="v2")
    live = served(v1)
    kept = decide(v1, live, capacity=free(0)).status["inputs"]
    announce = decide(v2, live, capacity=free(0), may_surge=False, kept_inputs=kept)
    assert announce.state == "Announcing" and announce.cause == "spec"
    assert announce.status["inputs"] == kept
    going = decide(v2, live, capacity=free(0), may_surge=False, kept_inputs=announce.status["inputs"],
                   announced=announce.status["announcedRecreate"], slot=False)
    assert going.state == "Rolling" and going.cause == "spec"
    # Once applied, the edit's inputs are the ones kept.
    assert going.status["inputs"] != kept
