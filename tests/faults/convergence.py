"""What "converged" means for the fault tests, checked against the real cluster.

Pods run on kwok (they never serve), so a converged VLLMDeployment is one whose every expected
child exists exactly once with the right owner, whose status describes its current generation
(observedGeneration == generation, a phase), and where no child the operator made is left
without a live owner.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MANAGED = "app.kubernetes.io/managed-by=scibox-vllm-operator"
OWNER_LABEL = "scibox.io/vllmdeployment"
CHILD_KINDS = "deployments,services,jobs,persistentvolumeclaims,networkpolicies"


def vllmd(name: str, **spec_overrides: Any) -> dict[str, Any]:
    """A VLLMDeployment that needs no hub: explicit GPUs and cache size; the cache claim is
    owned (deletionPolicy Delete) so that every child must have a live owner."""
    spec: dict[str, Any] = {"model": {"name": "scibox/tiny-llama"}, "resources": {"gpus": 1},
                            "cache": {"size": "1Gi", "deletionPolicy": "Delete"}}
    spec.update(spec_overrides)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": spec}


def apply_all(cluster, namespace: str, objects: list[dict[str, Any]]) -> None:
    """One kubectl call for many objects (a List), as a user's `kubectl apply -f dir/` would."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))


@dataclass
class Snapshot:
    vllmds: dict[str, dict[str, Any]]
    children: list[dict[str, Any]]
    taken_at: float = field(default_factory=time.monotonic)


def snapshot(cluster, namespace: str) -> Snapshot:
    vds = json.loads(cluster.kubectl("get", "vllmdeployments", "-n", namespace, "-o", "json").stdout)["items"]
    kids = json.loads(cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", MANAGED, "-o", "json").stdout)["items"]
    return Snapshot({v["metadata"]["name"]: v for v in vds if not v["metadata"].get("deletionTimestamp")},
                    [k for k in kids if not k["metadata"].get("deletionTimestamp")])


def _owner_uids(child: dict[str, Any]) -> list[str]:
    return [r["uid"] for r in child["metadata"].get("ownerReferences") or [] if r.get("kind") == "VLLMDeployment"]


def _job_complete(snap: Snapshot, job_names: list[str]) -> bool:
    for child in snap.children:
        if child["kind"] == "Job" and child["metadata"]["name"] in job_names:
            return any(c.get("type") == "Complete" and c.get("status") == "True"
                       for c in (child.get("status") or {}).get("conditions") or [])
    return False


def problems(snap: Snapshot, *, expect_network_policy: set[str] = frozenset(),
             expect_args: dict[str, str] | None = None) -> list[str]:
    """Everything that keeps `snap` from being converged ([] = converged).

    expect_args: VLLMDeployment name -> an argument its server container must have (to tell a
    Deployment of the current generation from a stale one)."""
    out: list[str] = []
    by_uid = {v["metadata"]["uid"]: n for n, v in snap.vllmds.items()}
    owned: dict[tuple[str, str], list[str]] = defaultdict(list)  # (vd, kind) -> child names
    for child in snap.children:
        kind, name = child["kind"], child["metadata"]["name"]
        uids = _owner_uids(child)
        if not uids:
            out.append(f"{kind} {name} has no VLLMDeployment owner")
            continue
        dead = [u for u in uids if u not in by_uid]
        if dead:
            out.append(f"{kind} {name} is orphaned: owner uid(s) {dead} are gone")
        for uid in uids:
            if uid in by_uid:
                owned[(by_uid[uid], kind)].append(name)
                label = (child["metadata"].get("labels") or {}).get(OWNER_LABEL)
                if label is not None and label != by_uid[uid]:
                    out.append(f"{kind} {name} is labelled for {label} but owned by {by_uid[uid]}")

    for name, vd in sorted(snap.vllmds.items()):
        status = vd.get("status") or {}
        if status.get("observedGeneration") != vd["metadata"]["generation"] or not status.get("phase"):
            out.append(f"{name}: status not converged (observedGeneration {status.get('observedGeneration')} "
                       f"of {vd['metadata']['generation']}, phase {status.get('phase')})")
        kinds = ["Deployment", "Service", "Job", "PersistentVolumeClaim"]
        if name in expect_network_policy:
            kinds.append("NetworkPolicy")
        for kind in kinds:
            names = owned.get((name, kind), [])
            if len(names) != 1:
                why = ""
                if kind == "Deployment" and not names:  # whose turn is it: the cluster's or the operator's?
                    why = " (its download Job is complete)" if _job_complete(snap, owned.get((name, "Job"), [])) \
                        else " (waiting for its download Job)"
                out.append(f"{name}: {len(names)} {kind}(s) {sorted(names)}, expected exactly one{why}")
        if name not in expect_network_policy and owned.get((name, "NetworkPolicy")):
            out.append(f"{name}: a NetworkPolicy it did not ask for")
        claim = status.get("cacheClaim")
        if claim and owned.get((name, "PersistentVolumeClaim")) not in (None, [claim]):
            out.append(f"{name}: status.cacheClaim {claim} but owns {owned.get((name, 'PersistentVolumeClaim'))}")
        if expect_args and name in expect_args:
            dep = next((c for c in snap.children if c["kind"] == "Deployment" and c["metadata"]["name"] == name), None)
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"] if dep else []
            if expect_args[name] not in args:
                out.append(f"{name}: Deployment args lack {expect_args[name]}")
    return out


def converged_count(snap: Snapshot) -> int:
    """VLLMDeployments whose own status describes their generation and that have a Deployment."""
    deployments = {c["metadata"]["name"] for c in snap.children if c["kind"] == "Deployment"}
    return sum(1 for n, v in snap.vllmds.items()
               if (v.get("status") or {}).get("observedGeneration") == v["metadata"]["generation"]
               and (v.get("status") or {}).get("phase") and n in deployments)


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def wait_converged(cluster, namespace: str, *, timeout: float = 420, **expect) -> tuple[Snapshot, float]:
    """Poll until `problems` is empty. Returns the converged snapshot and the operator's own
    share of the wait: the longest time any object's download Job was complete while its
    Deployment was still missing (the rest of the wait is the cluster's: scheduling, kwok, Jobs)."""
    job_done_at: dict[str, float] = {}
    lag = 0.0
    last: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        snap = snapshot(cluster, namespace)
        last = problems(snap, **expect)
        now = snap.taken_at
        for line in last:
            if line.endswith("(its download Job is complete)"):
                job_done_at.setdefault(line.split(":", 1)[0], now)
        waiting = {line.split(":", 1)[0] for line in last if line.endswith("(its download Job is complete)")}
        for name in list(job_done_at):
            if name not in waiting:
                lag = max(lag, now - job_done_at.pop(name))
        if not last:
            return snap, max([lag] + [now - t for t in job_done_at.values()])
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged after {timeout}s; {len(last)} problems:\n" + "\n".join(last[:40]))
        time.sleep(0.5)


def wait_controllers_recovered(cluster, timeout: float = 240) -> float:
    """After a long API server outage kube-controller-manager backs off for a while: wait until
    it serves again (a new namespace gets its `default` ServiceAccount), so that the next test's
    fixtures do not pay for this test's fault. Returns the seconds waited."""
    import uuid

    started = time.monotonic()
    ns = f"recover-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        while cluster.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode != 0:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"kube-controller-manager still not serving {timeout}s after the outage")
            time.sleep(1)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return time.monotonic() - started
