"""desired(): every child of a spec and every removal, pure (the cluster tests run it for real)."""

from __future__ import annotations

import copy

import pytest

from scibox_operator.api.names import ROLLOUT_ANNOTATION
from scibox_operator.api.quantity import parse_quantity
from scibox_operator.api.spec import parse
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name
from scibox_operator.reconcile.desired import Observed, desired
from scibox_operator.reconcile.diff import RENDER_HASH_ANNOTATION, needs_apply, owned_by
from scibox_operator.reconcile.last_plan import last_known_plan, plan_inputs
from scibox_operator.reconcile.status import CacheState, plan_status

CACHED = CacheState(True, reason="Downloaded")


def vd_of(name="m", uid="uid-1", **spec):
    base = {"model": {"name": "org/model"}, "resources": {"gpus": 1}}
    base.update(spec)
    return parse({"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
                  "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 2}, "spec": base})


def plan_of(vd, *, nodes=1, shared=False, size="10Gi", tp=1, pp=1):
    return ServingPlan(tp, pp, tp * pp, "test", cache_claim_name(vd, shared), shared, size, "img:1", nodes)


def observed(children=(), **kw):
    kw.setdefault("cache", CACHED)
    kw.setdefault("service_monitor_crd", True)
    kw.setdefault("leader_worker_set_crd", True)
    return Observed(children={(c["kind"], c["metadata"]["name"]): c for c in children}, **kw)


def kinds(want):
    return sorted((c["kind"], c["metadata"]["name"]) for c in want.children)


def child(want, kind):
    return next(c for c in want.children if c["kind"] == kind)


def test_same_inputs_render_byte_identical_stamped_children():
    vd = vd_of(engine={"env": [{"name": "A", "value": "1"}]})
    a, b = desired(vd, plan_of(vd), observed()), desired(vd, plan_of(vd), observed())
    assert a == b
    assert all(RENDER_HASH_ANNOTATION in c["metadata"]["annotations"] for c in a.children)
    # The hash is on the object, never in a pod template (a new hash alone must restart nothing).
    template = child(a, "Deployment")["spec"]["template"]["metadata"]
    assert RENDER_HASH_ANNOTATION not in (template.get("annotations") or {})


def test_a_removed_env_entry_changes_the_hash_so_the_live_object_is_rewritten():
    with_env = vd_of(engine={"env": [{"name": "A", "value": "1"}]})
    without = vd_of()
    live = child(desired(with_env, plan_of(with_env), observed()), "Deployment")
    new = child(desired(without, plan_of(without), observed()), "Deployment")
    # The subset check alone sees nothing: the new render is contained in the old live object.
    stripped = copy.deepcopy(new)
    stripped["metadata"]["annotations"].pop(RENDER_HASH_ANNOTATION)
    stripped["metadata"]["annotations"].pop(ROLLOUT_ANNOTATION)  # it names the template's digest
    assert not needs_apply(stripped, live)
    assert needs_apply(new, live)
    assert not needs_apply(new, new)


def test_optional_children_are_removed_when_the_spec_drops_them():
    on = vd_of(networkPolicy={"enabled": True}, monitoring={"serviceMonitor": True})
    live = desired(on, plan_of(on), observed()).children
    assert ("NetworkPolicy", "m") in kinds(desired(on, plan_of(on), observed()))
    off = vd_of(monitoring={"serviceMonitor": False})
    want = desired(off, plan_of(off), observed(live))
    assert set(want.removals) == {("NetworkPolicy", "m"), ("ServiceMonitor", "m")}
    assert ("NetworkPolicy", "m") not in kinds(want)


def test_switching_to_multi_node_removes_the_deployment_and_serves_from_leaders():
    vd = vd_of(resources={"gpus": 16}, cache={"accessMode": "ReadWriteMany"})  # a group mounts from 2 nodes
    single = desired(vd, plan_of(vd, tp=8, pp=2, nodes=1, shared=True), observed())
    multi = desired(vd, plan_of(vd, tp=8, pp=2, nodes=2, shared=True), observed(single.children))
    assert ("Deployment", "m") in multi.removals and ("LeaderWorkerSet", "m-group") in kinds(multi)
    assert "leaderworkerset.sigs.k8s.io/worker-index" in child(multi, "Service")["spec"]["selector"]
    back = desired(vd, plan_of(vd, tp=8, pp=2, nodes=1, shared=True), observed(multi.children))
    assert ("LeaderWorkerSet", "m-group") in back.removals
    assert "leaderworkerset.sigs.k8s.io/worker-index" not in child(back, "Service")["spec"]["selector"]


def test_without_the_leader_worker_set_crd_nothing_is_rendered_and_the_reason_given():
    vd = vd_of(resources={"gpus": 16})
    want = desired(vd, plan_of(vd, tp=8, pp=2, nodes=2), observed(leader_worker_set_crd=False))
    assert want.children == () and want.failure.reason == "LeaderWorkerSetMissing"


def test_the_workload_waits_for_the_cache_and_a_finished_job_is_left_alone():
    vd = vd_of()
    pending = desired(vd, plan_of(vd), observed(cache=CacheState(False, active=True, reason="Downloading")))
    assert ("Job", plan_of(vd).cache_claim + "-download") in kinds(pending)
    assert "Deployment" not in [k for k, _ in kinds(pending)] and not pending.workload_current
    done = desired(vd, plan_of(vd), observed(pending.children))
    assert "Job" not in [k for k, _ in kinds(done)] and not done.removals and done.workload_current


def test_a_failed_download_is_removed_only_when_its_inputs_changed():
    vd = vd_of()
    failed = CacheState(False, failed=True, reason="DownloadFailed")
    job = child(desired(vd, plan_of(vd), observed(cache=CacheState(False))), "Job")
    assert desired(vd, plan_of(vd), observed([job], cache=failed)).removals == ()
    fixed = vd_of(cache={"tokenSecretRef": {"name": "hf"}})
    assert desired(fixed, plan_of(fixed), observed([job], cache=failed)).removals == (("Job", job["metadata"]["name"]),)


def test_a_shared_claim_is_kept_while_any_user_retains_it_and_every_user_renders_it_alike():
    keep = vd_of("keep", "uid-k", cache={"accessMode": "ReadWriteMany"})
    drop = vd_of("drop", "uid-d", cache={"accessMode": "ReadWriteMany", "deletionPolicy": "Delete"})
    drop2 = vd_of("drop2", "uid-e", cache={"accessMode": "ReadWriteMany", "deletionPolicy": "Delete"})
    pending = CacheState(False, active=True)
    mixed = [desired(u, plan_of(u, shared=True), observed(users=(u, *others), cache=pending))
             for u, others in ((keep, (drop,)), (drop, (keep,)))]
    claims = [child(w, "PersistentVolumeClaim") for w in mixed]
    jobs = [child(w, "Job") for w in mixed]
    assert claims[0] == claims[1] and "ownerReferences" not in claims[0]["metadata"], "a Retain user keeps it"
    assert jobs[0] == jobs[1], "one Job content whoever renders it (no ping-pong of owners)"
    assert sorted(r["uid"] for r in jobs[0]["metadata"]["ownerReferences"]) == ["uid-d", "uid-k"]
    # The Retain user renders the claim alike without gathering the others.
    alone = desired(keep, plan_of(keep, shared=True), observed(users=(keep,)))
    assert child(alone, "PersistentVolumeClaim") == claims[0]
    both_delete = desired(drop, plan_of(drop, shared=True), observed(users=(drop, drop2)))
    refs = child(both_delete, "PersistentVolumeClaim")["metadata"]["ownerReferences"]
    assert sorted(r["uid"] for r in refs) == ["uid-d", "uid-e"] and not any(r["controller"] for r in refs)


def test_a_finished_shared_job_follows_its_users_and_is_left_alone_once_it_does():
    def user(name, uid):
        return vd_of(name, uid, cache={"accessMode": "ReadWriteMany", "deletionPolicy": "Delete"})

    first, late, other = user("a", "uid-a"), user("b", "uid-b"), user("c", "uid-c")
    plan = plan_of(first, shared=True)
    job = copy.deepcopy(child(desired(first, plan, observed(users=(first,), cache=CacheState(False))), "Job"))
    job["metadata"]["uid"] = "job-1"
    job["metadata"]["ownerReferences"].append({"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm-1"})

    # b came after the download: its pass adds it, keeping the foreign reference
    joined = desired(late, plan, observed([job], users=(late, first), users_gathered=True))
    assert "Job" not in [k for k, _ in kinds(joined)], "a finished Job is never re-applied"
    (update,) = joined.owner_updates
    assert (update.kind, update.name, update.uid) == ("Job", job["metadata"]["name"], "job-1")
    assert [r["uid"] for r in update.owner_references] == ["cm-1", "uid-a", "uid-b"]
    assert not any(r.get("controller") for r in update.owner_references)

    # a user that left (c owned it, is no longer a user): removed
    job["metadata"]["ownerReferences"] = [*update.owner_references[:2], {**update.owner_references[1], "uid": "uid-c"}]
    left = desired(first, plan, observed([job], users=(first,), users_gathered=True))
    assert [r["uid"] for r in left.owner_updates[0].owner_references] == ["cm-1", "uid-a"]

    # owned by exactly its users: nothing to write; users not gathered: nothing is decided
    job["metadata"]["ownerReferences"] = list(update.owner_references)
    assert desired(first, plan, observed([job], users=(first, late), users_gathered=True)).owner_updates == ()
    assert desired(other, plan, observed([job], users=(other,))).owner_updates == ()


def test_a_claim_never_shrinks_and_grows_only_where_the_storage_class_allows():
    small, big = vd_of(cache={"size": "1Gi"}), vd_of(cache={"size": "2Gi"})
    live = child(desired(big, plan_of(big, size="2Gi"), observed()), "PersistentVolumeClaim")
    live["spec"]["storageClassName"] = "local-path"
    shrunk = desired(small, plan_of(small, size="1Gi"), observed([live]))
    assert child(shrunk, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert not [n for n in shrunk.notes if n.type != "Progressing"]
    bigger = vd_of(cache={"size": "3Gi"})
    fixed = desired(bigger, plan_of(bigger, size="3Gi"), observed([live], expandable_storage={"local-path": False}))
    assert child(fixed, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert [n.reason for n in fixed.notes if n.type != "Progressing"] == ["StorageClassCannotExpand"]
    grows = desired(bigger, plan_of(bigger, size="3Gi"), observed([live], expandable_storage={"local-path": True}))
    assert child(grows, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert "storageClassName" not in child(grows, "PersistentVolumeClaim")["spec"], "the server's default stays its own"
    other_class = vd_of(cache={"size": "3Gi", "storageClassName": "fast"})
    kept = desired(other_class, plan_of(other_class, size="3Gi"), observed([live], expandable_storage={"local-path": True}))
    assert child(kept, "PersistentVolumeClaim")["spec"]["storageClassName"] == "local-path", "immutable: kept"


@pytest.mark.parametrize("text,value", [("1Gi", 2**30), ("100G", 10**11), ("500Mi", 500 * 2**20), ("1.5Ti", 1.5 * 2**40),
                                        ("2", 2)])
def test_quantities(text, value):
    assert parse_quantity(text) == value
    with pytest.raises(ValueError):
        parse_quantity("ten")


def test_ownership_is_the_controller_reference_or_the_cache_labels():
    vd = vd_of()
    want = desired(vd, plan_of(vd), observed(cache=CacheState(False)))
    svc, claim, job = child(want, "Service"), child(want, "PersistentVolumeClaim"), child(want, "Job")
    assert owned_by("Service", svc, "uid-1") and not owned_by("Service", svc, "uid-2")
    users = {"metadata": {"name": "m", "labels": dict(svc["metadata"]["labels"])}}
    assert not owned_by("Service", users, "uid-1"), "our labels alone do not make a Service ours"
    assert owned_by("PersistentVolumeClaim", claim, "uid-2") and owned_by("Job", job, "uid-2")
    assert not owned_by("PersistentVolumeClaim", {"metadata": {"name": claim["metadata"]["name"]}}, "uid-1")


def test_the_last_plan_is_reused_only_for_the_inputs_it_was_made_for():
    vd = vd_of(parallelism={"tensorParallelSize": "auto"}, resources={"gpuProduct": "NVIDIA-H100-80GB-HBM3"})
    from dataclasses import replace

    plan = replace(plan_of(vd, size="3Gi", nodes=1), weight_bytes_per_pod=736_000)
    status = plan_status(plan, plan_inputs(vd))
    kept = last_known_plan(vd, status, cache_shared=False, image="img:1")
    assert kept == plan
    edited = vd_of(parallelism={"tensorParallelSize": "auto"}, resources={"gpuProduct": "NVIDIA-L4"})
    assert last_known_plan(edited, status, cache_shared=False, image="img:1") is None
    assert last_known_plan(vd, {}, cache_shared=False, image="img:1") is None


def test_the_download_fetches_from_the_operators_hub_unless_the_spec_names_one():
    plain, named = vd_of(), vd_of(cache={"endpoint": "http://127.0.0.1:5000"})
    for vd, expected in ((plain, "http://127.0.0.1:4000"), (named, "http://127.0.0.1:5000")):
        want = desired(vd, plan_of(vd), observed(cache=CacheState(False), hub_endpoint="http://127.0.0.1:4000"))
        env = {e["name"]: e.get("value") for e in child(want, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["HF_ENDPOINT"] == expected


def test_a_rotated_api_key_changes_the_pod_template_and_no_key_means_no_digest():
    vd = vd_of(auth={"apiKeySecretRef": {"name": "k"}})
    def template(digest):
        dep = child(desired(vd, plan_of(vd), observed(api_key_digest=digest)), "Deployment")
        return dep["spec"]["template"]["metadata"]
    assert template("aaaa") != template("bbbb")
    assert template("aaaa")["annotations"]["scibox.io/api-key-digest"] == "aaaa"
    keyless = vd_of()
    dep = child(desired(keyless, plan_of(keyless), observed(api_key_digest="aaaa")), "Deployment")
    assert "annotations" not in dep["spec"]["template"]["metadata"]


def test_a_multi_node_group_closes_rays_ports_to_all_but_its_own_pods_even_without_a_policy():
    vd = vd_of(resources={"gpus": 16}, cache={"accessMode": "ReadWriteMany"})
    multi = desired(vd, plan_of(vd, tp=8, pp=2, nodes=2, shared=True), observed())
    rules = child(multi, "NetworkPolicy")["spec"]["ingress"]
    assert rules[0] == {"ports": [{"protocol": "TCP", "port": 8000}]}
    assert rules[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "m"
    single = desired(vd, plan_of(vd, tp=8, pp=2, nodes=1, shared=True), observed(multi.children))
    assert ("NetworkPolicy", "m") in single.removals


# --- cache access mode vs how many pods mount it (issue 19) ------------------------------------


@pytest.mark.parametrize("spec,nodes,why", [
    ({"replicas": 2}, 1, "replicas 2"),
    ({"rollout": {"strategy": "RollingUpdate"}}, 1, "surge pod"),
    ({"cache": {"accessMode": "ReadWriteOncePod"}, "replicas": 3}, 1, "replicas 3"),
    ({"resources": {"gpus": 16}}, 2, "2 pods per replica"),
])
def test_a_read_write_once_cache_mounted_by_several_pods_is_refused_with_the_fix(spec, nodes, why):
    vd = vd_of(**spec)
    plan = plan_of(vd, nodes=nodes, tp=8 if nodes > 1 else 1, pp=nodes)
    want = desired(vd, plan, observed())
    assert want.children == () and want.removals == ()
    assert want.failure.reason == "CacheAccessModeConflict"
    assert why in want.failure.message and "ReadWriteMany" in want.failure.message
    assert "cache.accessMode" in want.failure.message and plan.cache_claim in want.failure.message
    assert ("replicas 1 and rollout.strategy Recreate" in want.failure.message) is (nodes == 1)


def test_one_pod_or_shareable_storage_is_accepted():
    single = vd_of()
    assert desired(single, plan_of(single), observed()).failure is None
    stopped = vd_of(replicas=0, rollout={"strategy": "RollingUpdate"})
    assert desired(stopped, plan_of(stopped), observed()).failure is None, "no pod mounts a scaled-to-zero cache"
    rwx = vd_of(replicas=4, rollout={"strategy": "RollingUpdate"}, cache={"accessMode": "ReadWriteMany"})
    want = desired(rwx, plan_of(rwx, shared=True), observed())
    assert want.failure is None and child(want, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    # Auto picked RWX (the StorageClass offers it): the same spec is accepted.
    auto = vd_of(replicas=4)
    assert desired(auto, plan_of(auto, shared=True), observed()).failure is None
    assert desired(auto, plan_of(auto, shared=False), observed()).failure.reason == "CacheAccessModeConflict"


def test_the_live_claims_immutable_access_mode_decides_and_a_users_claim_only_when_the_spec_says():
    vd = vd_of(replicas=2, cache={"accessMode": "ReadWriteMany"})
    plan = plan_of(vd, shared=True)
    live = copy.deepcopy(child(desired(vd, plan, observed(cache=CacheState(False))), "PersistentVolumeClaim"))
    live["spec"]["accessModes"] = ["ReadWriteOnce"]  # made before, by hand or an older spec
    assert desired(vd, plan, observed([live])).failure.reason == "CacheAccessModeConflict"
    live["spec"]["accessModes"] = ["ReadOnlyMany"]
    assert desired(vd, plan, observed([live])).failure is None
    # The user's own claim: unknown modes under Auto (not the operator's to judge), else the spec's word.
    theirs = vd_of(replicas=2, cache={"existingClaim": "weights"})
    assert desired(theirs, plan_of(theirs), observed()).failure is None
    said_rwo = vd_of(replicas=2, model={"name": "pvc://weights/llama"}, cache={"accessMode": "ReadWriteOnce"})
    assert desired(said_rwo, plan_of(said_rwo), observed()).failure.reason == "CacheAccessModeConflict"


def test_cli_render_refuses_what_the_controller_would_refuse():
    from scibox_operator.cli import render_manifests
    from scibox_operator.planning.serving_plan import PlanFailure

    body = {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
            "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1}, "replicas": 2}}
    with pytest.raises(PlanFailure, match="CacheAccessModeConflict|ReadWriteMany"):
        render_manifests(copy.deepcopy(body))
    body["spec"]["cache"] = {"accessMode": "ReadWriteMany"}
    assert any(m["kind"] == "Deployment" for m in render_manifests(body))
