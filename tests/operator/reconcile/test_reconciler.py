"""The reconciler against an in-memory KubeClient (no cluster): which writes a pass sends.
The same behaviours run for real in tests/operator/test_convergence.py and test_ownership.py."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from scibox_operator.config import Settings
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.runtime.kube import ApiError


class MemoryKube:
    """What the reconciler asks of the API server, over a dict; server-side apply replaces the
    object's content with what was sent (all fields are owned by the one manager here)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 0

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        obj["metadata"].setdefault("uid", f"uid-{self.version}")
        return copy.deepcopy(obj)

    async def apply(self, obj: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.writes.append(("apply", key[0], key[2]))
        uid = (self.objects.get(key) or {}).get("metadata", {}).get("uid")
        new = copy.deepcopy(obj)
        if uid:
            new["metadata"]["uid"] = uid
        self.objects[key] = new
        return self._stamp(new)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found else None

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, namespace or "", name), None) is not None

    async def request(self, method: str, path: str, **_: Any) -> Any:
        raise ApiError(404, "NotFound", path)

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("status", kind, name))
        body = self.vllmd
        body["status"] = {k: v for k, v in {**(body.get("status") or {}), **status}.items() if v is not None}
        return self._stamp(body)

    async def create_event(self, involved: dict[str, Any], **_: Any) -> None:
        return None


def vllmd(**spec: Any) -> dict[str, Any]:
    base = {"model": {"name": "pvc://models/tiny"}, "resources": {"gpus": 1}}
    base.update(spec)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "vd-uid", "generation": 1, "resourceVersion": "1"},
            "spec": base}


def run_pass(controller: Controller, kube: MemoryKube, body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One pass from a store that holds exactly what the API holds (as the watch would)."""
    kube.vllmd = body
    controller.store.vllmds[("ns", "m")] = copy.deepcopy(body)
    for (kind, _ns, _name), obj in kube.objects.items():
        controller.store.put_child(kind, copy.deepcopy(obj))
    before = len(kube.writes)
    asyncio.run(controller.reconcile(("ns", "m")))
    return kube.writes[before:]


def fresh() -> tuple[Controller, MemoryKube]:
    kube = MemoryKube()
    controller = Controller(kube, Settings(workers=1))  # type: ignore[arg-type]
    return controller, kube


def test_first_pass_writes_the_children_and_a_second_pass_writes_nothing():
    controller, kube = fresh()
    body = vllmd(engine={"env": [{"name": "A", "value": "1"}]})
    first = run_pass(controller, kube, body)
    assert {w[1] for w in first if w[0] == "apply"} == {"Deployment", "Service"}
    assert ("status", "VLLMDeployment", "m") in first
    assert run_pass(controller, kube, body) == [], "nothing changed: no write at all"


def test_a_removed_env_entry_is_written_and_a_dropped_policy_deleted():
    controller, kube = fresh()
    # Explicit Recreate: Auto would first announce a recreate on this GPU-less cluster (test_rollout.py)
    run_pass(controller, kube, vllmd(engine={"env": [{"name": "A", "value": "1"}]}, networkPolicy={"enabled": True},
                                     rollout={"strategy": "Recreate"}))
    edited = vllmd(rollout={"strategy": "Recreate"})
    edited["metadata"]["generation"] = 2
    writes = run_pass(controller, kube, edited)
    assert ("apply", "Deployment", "m") in writes and ("delete", "NetworkPolicy", "m") in writes
    env = kube.objects[("Deployment", "ns", "m")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "A" not in {e["name"] for e in env}


def test_an_object_someone_else_made_is_never_written_and_is_reported():
    controller, kube = fresh()
    theirs = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m", "namespace": "ns", "uid": "theirs"},
              "spec": {"selector": {"app": "mine"}}}
    kube.objects[("Service", "ns", "m")] = copy.deepcopy(theirs)
    kube.vllmd = vllmd()
    controller.store.vllmds[("ns", "m")] = vllmd()  # the store never saw the unlabelled Service
    asyncio.run(controller.reconcile(("ns", "m")))
    assert kube.objects[("Service", "ns", "m")] == theirs
    assert ("apply", "Service", "m") not in kube.writes
    ready = next(c for c in kube.vllmd["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ChildConflict" and "Service m" in ready["message"]


def multi_node() -> tuple[Controller, MemoryKube, dict[str, Any]]:
    from scibox_operator.api.names import LEADER_WORKER_SET_CRD
    from scibox_operator.planning.serving_plan import GpuNode

    controller, kube = fresh()
    controller.store.established_crds.add(LEADER_WORKER_SET_CRD)
    for name in ("gpu-a", "gpu-b"):
        controller.store.nodes[name] = GpuNode(name, (), 8)
    body = vllmd(resources={"gpus": 16}, parallelism={"tensorParallelSize": 8, "pipelineParallelSize": 2})
    return controller, kube, body


def group_status(kube: MemoryKube, ready: int) -> None:
    group = kube.objects[("LeaderWorkerSet", "ns", "m-group")]
    group["status"] = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": ready,
                       "conditions": [{"type": "Available", "status": "True" if ready else "False",
                                       "observedGeneration": 1}]}
    group["metadata"]["generation"] = 1


def retry_of_pass(controller: Controller, kube: MemoryKube, body: dict[str, Any]) -> float | None:
    """One pass from a store that holds what the API holds; what the pass asked for: seconds
    until it must run again, or None."""
    kube.vllmd = body
    controller.store.vllmds[("ns", "m")] = copy.deepcopy(body)
    for (kind, _ns, _name), obj in kube.objects.items():
        controller.store.put_child(kind, copy.deepcopy(obj))
    return asyncio.run(controller.reconcile(("ns", "m")))


def test_a_leaderworkerset_still_moving_is_read_again_on_a_back_off_until_it_is_at_rest():
    # kopf may never watch a LeaderWorkerSet CRD installed after it started: no event would
    # bring the pass that sees the group ready, so the pass itself asks to run again.
    controller, kube, body = multi_node()
    assert retry_of_pass(controller, kube, body) == 2.0, "the group was just created"
    assert ("apply", "LeaderWorkerSet", "m-group") in kube.writes
    group_status(kube, ready=0)
    assert retry_of_pass(controller, kube, body) == 4.0, "still not ready: read again later"
    group_status(kube, ready=1)
    assert retry_of_pass(controller, kube, body) is None, "at rest: no poll"
    assert ("ns", "m") not in controller.group_polls
    assert kube.vllmd["status"]["replicas"] == 1
    group_status(kube, ready=0)  # a leader restarts: moving again, the back-off starts over
    assert retry_of_pass(controller, kube, body) == 2.0


def test_a_crd_that_goes_takes_its_objects_out_of_the_store_and_no_write_follows():
    # Their watch stops with the CRD, so no DELETED event would come: a stale ScaledObject would
    # draw a DELETE on every later pass.
    from scibox_operator.api.names import SCALED_OBJECT_CRD

    controller, kube = fresh()
    controller.store.established_crds.add(SCALED_OBJECT_CRD)
    body = vllmd(autoscaling={"minReplicas": 1, "maxReplicas": 2})
    run_pass(controller, kube, body)
    assert ("ScaledObject", "ns", "m") in kube.objects
    controller.crds_changed(SCALED_OBJECT_CRD, False)
    assert controller.store.child("ScaledObject", "ns", "m") is None
    del kube.objects[("ScaledObject", "ns", "m")]  # the API server removed it with its CRD
    writes = run_pass(controller, kube, body)
    assert ("apply", "HorizontalPodAutoscaler", "m") in writes
    assert not [w for w in writes if w[0] == "delete"], writes
    assert [w for w in run_pass(controller, kube, body) if w[0] != "status"] == []
