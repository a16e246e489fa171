"""The operator SIGKILLed while it reconciles 50 VLLMDeployments, then restarted (issue 10).

The operator keeps no state outside the cluster: a restart re-lists everything and must finish
the work of the killed process without making a second copy of any child and without leaving
a child whose owner is gone. While it is down, users keep working (objects are created, edited
and deleted); the restarted operator must catch up on all of it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .convergence import apply_all, converged_count, metric_sum, problems, snapshot, vllmd, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

N = 50
CONVERGE_TIMEOUT = 420


def _deployment_applies(operator) -> float:
    return metric_sum(operator.metrics(), "scibox_operator_applies_total", kind="Deployment")


def _kill_after_applies(cluster, operator, namespace, baseline: float, applies: int) -> dict:
    """SIGKILL the operator once it has sent `applies` more Deployment applies than `baseline`:
    its own counter is polled (cheap), because the cluster's view changes faster than a LIST."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while _deployment_applies(operator) < baseline + applies:
        assert time.monotonic() < deadline, "the operator never got going"
        time.sleep(0.005)
    operator.kill()
    snap = snapshot(cluster, namespace)
    return {"converged_at_kill": converged_count(snap), "children_at_kill": len(snap.children)}


def _wait_converged(cluster, namespace, **expect):
    return wait_converged(cluster, namespace, timeout=CONVERGE_TIMEOUT, **expect)[0]


def _child_uids(snap) -> dict[tuple[str, str], str]:
    return {(c["kind"], c["metadata"]["name"]): c["metadata"]["uid"] for c in snap.children}


def test_sigkill_while_reconciling_50_then_restart_converges_without_duplicates_or_orphans(
        cluster, kube, operator, namespace):
    from kubernetes import client

    names = [f"kill-{i:02d}" for i in range(N)]
    with_policy = set(names[::5])  # every fifth one also has a NetworkPolicy
    numbers: dict[str, float | int] = {"vllmdeployments": N}
    try:
        # --- 1. create 50, SIGKILL part-way -----------------------------------------------------
        started = time.monotonic()
        baseline = _deployment_applies(operator)
        apply_all(cluster, namespace, [vllmd(n, **({"networkPolicy": {"enabled": True}} if n in with_policy else {}))
                                       for n in names])
        numbers.update(_kill_after_applies(cluster, operator, namespace, baseline, N // 4))
        assert numbers["converged_at_kill"] < N, "killed too late to test anything"
        numbers["killed_after_s"] = round(time.monotonic() - started, 1)

        # While it is down: 5 deleted, 5 edited, 5 created.
        gone, edited, late = names[-5:], names[:5], [f"late-{i}" for i in range(5)]
        cluster.kubectl("delete", "vllmd", *gone, "-n", namespace, "--wait=false")
        apply_all(cluster, namespace, [vllmd(n, engine={"maxNumSeqs": 7},
                                             **({"networkPolicy": {"enabled": True}} if n in with_policy else {}))
                                       for n in edited] + [vllmd(n) for n in late])

        restarted = time.monotonic()
        operator.start()
        snap, lag = wait_converged(cluster, namespace, timeout=CONVERGE_TIMEOUT,
                                   expect_network_policy=with_policy - set(gone),
                                   expect_args={n: "--max-num-seqs=7" for n in edited})
        numbers["converged_after_restart_s"] = round(time.monotonic() - restarted, 1)
        numbers["operator_lag_after_restart_s"] = round(lag, 1)
        assert sorted(snap.vllmds) == sorted(set(names) - set(gone) | set(late))
        assert not [c for c in snap.children if c["metadata"]["name"].startswith(tuple(gone))], \
            "children of VLLMDeployments deleted while the operator was down are left"

        # Stable: nothing is recreated or duplicated once converged.
        time.sleep(5)
        later = snapshot(cluster, namespace)
        assert problems(later, expect_network_policy=with_policy - set(gone)) == []
        assert _child_uids(later) == _child_uids(snap), "children were replaced after convergence"

        # --- 2. edit all of them at once, SIGKILL the moment the last edit is in ----------------
        # (a burst of parallel patches: the operator is then still rolling most of them)
        live = sorted(snap.vllmds)
        custom = client.CustomObjectsApi(kube)
        edit_started = time.monotonic()
        with ThreadPoolExecutor(max_workers=25) as pool:
            list(pool.map(lambda n: custom.patch_namespaced_custom_object(
                "scibox.io", "v1alpha1", namespace, "vllmdeployments", n, {"spec": {"engine": {"maxNumSeqs": 9}}}),
                live))
        operator.kill()
        at_kill = snapshot(cluster, namespace)
        numbers["edit_rolled_at_kill"] = sum(
            1 for c in at_kill.children if c["kind"] == "Deployment"
            and "--max-num-seqs=9" in c["spec"]["template"]["spec"]["containers"][0]["args"])
        numbers["edit_converged_at_kill"] = converged_count(at_kill)
        numbers["edit_killed_after_s"] = round(time.monotonic() - edit_started, 1)
        restarted = time.monotonic()
        operator.start()
        snap2 = _wait_converged(cluster, namespace, expect_network_policy=with_policy - set(gone),
                                expect_args={n: "--max-num-seqs=9" for n in live})
        numbers["edit_converged_after_restart_s"] = round(time.monotonic() - restarted, 1)
        before = _child_uids(snap)
        after = _child_uids(snap2)
        kept = {k for k in before if k in after and before[k] == after[k]}
        assert kept == set(before) & set(after) and set(before) == set(after), \
            "an edit must update children in place, not replace them"
        assert metric_sum(operator.metrics(), "scibox_operator_reconciles_total", result="ok") > 0
    finally:
        print("\nFAULTS operator-kill " + json.dumps(numbers, sort_keys=True))
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()


def test_fifty_converge_without_faults(cluster, operator, namespace):
    """The yardstick for the numbers above: the same 50 objects with no fault at all."""
    names = [f"calm-{i:02d}" for i in range(N)]
    started = time.monotonic()
    apply_all(cluster, namespace, [vllmd(n) for n in names])
    snap = _wait_converged(cluster, namespace)
    assert sorted(snap.vllmds) == names
    print("\nFAULTS baseline " + json.dumps({"vllmdeployments": N,
                                              "converged_s": round(time.monotonic() - started, 1)}))


def test_sigkill_with_a_shared_cache_claim_leaves_it_owned_by_the_live_users_only(cluster, operator, namespace):
    """Ten VLLMDeployments of one model share one ReadWriteMany claim and one download Job,
    owned by all of them. Users deleted while the operator is dead must drop out of the
    owners; the claim stays while one user is left."""
    names = [f"shared-{i}" for i in range(10)]
    cache = {"size": "1Gi", "accessMode": "ReadWriteMany", "deletionPolicy": "Delete"}
    baseline = _deployment_applies(operator)
    try:
        apply_all(cluster, namespace, [vllmd(n, cache=cache) for n in names])
        _kill_after_applies(cluster, operator, namespace, baseline, 3)
        cluster.kubectl("delete", "vllmd", *names[:4], "-n", namespace, "--wait=false")
        operator.start()
        snap = _wait_converged(cluster, namespace)
    finally:
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()
    claims = [c for c in snap.children if c["kind"] == "PersistentVolumeClaim"]
    jobs = [c for c in snap.children if c["kind"] == "Job"]
    assert len(claims) == 1 and len(jobs) == 1, [c["metadata"]["name"] for c in claims + jobs]
    live = {v["metadata"]["uid"] for v in snap.vllmds.values()}
    for child in claims + jobs:
        owners = {r["uid"] for r in child["metadata"]["ownerReferences"]}
        assert owners == live, f"{child['kind']} owners {len(owners)} != the {len(live)} live users"
