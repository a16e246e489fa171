"""Status computation (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from scibox_operator.api.spec import parse
from scibox_operator.engine.cache_layout import pod_download_report as download_report
from scibox_operator.planning.serving_plan import ServingPlan
from scibox_operator.readiness.verdicts import summarize_readiness
from scibox_operator.reconcile.status import CacheState, Failure, compute_status, status_differs

T0 = datetime(2026, 1, 1, tzinfo=UTC)
VD = parse({"metadata": {"name": "m", "namespace": "n", "uid": "u", "generation": 2},
            "spec": {"model": {"name": "a/b"}, "replicas": 2}})
PLAN = ServingPlan(2, 1, 2, "because", "claim", False, "10Gi", "img")


def job(cond=None, failed=0):
    return {"metadata": {"name": "j"}, "status": {"failed": failed, "conditions": [cond] if cond else []}}


def test_cache_state_reads_the_job_and_the_download_report():
    done = CacheState.from_job(job({"type": "Complete", "status": "True"}),
                               {"bytes": 1_500_000_000, "duration_seconds": 83.2, "file_count": 7})
    assert done.complete and "1.50 GB in 83.2s (7 files)" in done.message
    failed = CacheState.from_job(job({"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}),
                                 {"error": "not_found", "message": "scibox/nope: 404"})
    assert failed.failed and failed.reason == "DownloadFailed" and "[not_found]: scibox/nope: 404" in failed.message
    running = CacheState.from_job(job(failed=1), {"error": "unreachable", "message": "mirror down"})
    assert running.active and "1 failed attempts" in running.message and "mirror down" in running.message
    assert not CacheState.from_job(None).complete


def test_download_report_from_the_termination_message():
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": json.dumps({"bytes": 5})}}}]}}
    assert download_report(pod) == {"bytes": 5}
    assert download_report({"status": {"containerStatuses": [{"state": {"running": {}}}]}}) is None


def test_phases_and_transition_times():
    waiting = compute_status(VD, current=None, now=T0, plan=PLAN, cache=CacheState(False, active=True, reason="Downloading", message="m"))
    assert waiting["phase"] == "Downloading" and waiting["observedGeneration"] == 2
    dep = {"status": {"replicas": 2, "readyReplicas": 2}}
    one = summarize_readiness([], 2)
    pending = compute_status(VD, current=waiting, now=T0 + timedelta(seconds=5), plan=PLAN,
                             cache=CacheState(True, reason="Downloaded", message="ok"), deployment=dep,
                             readiness=one, probing=True)
    ready_cond = next(c for c in pending["conditions"] if c["type"] == "Ready")
    assert pending["phase"] == "Deploying" and ready_cond["reason"] == "Pending"
    # Ready stays False: its transition time is kept, while ModelCached moved to True now.
    assert ready_cond["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    cached = next(c for c in pending["conditions"] if c["type"] == "ModelCached")
    assert cached["lastTransitionTime"] == "2026-01-01T00:00:05Z"
    again = compute_status(VD, current=pending, now=T0 + timedelta(hours=1), plan=PLAN,
                           cache=CacheState(True, reason="Downloaded", message="ok"), deployment=dep,
                           readiness=one, probing=True)
    assert not status_differs(pending, again), "a later pass with nothing new must not rewrite status"


def test_failure_and_restart_carry_over():
    failed = compute_status(VD, current=None, now=T0, failure=Failure("ModelNotFound", "404"))
    assert failed["phase"] == "Failed" and next(c for c in failed["conditions"] if c["type"] == "Ready")["reason"] == "ModelNotFound"
    serving = {"conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "2/2",
                               "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
               "readyReplicas": 2}
    after_restart = compute_status(VD, current=serving, now=T0, plan=PLAN, cache=CacheState(True, reason="D", message="m"),
                                   deployment={"status": {"replicas": 2, "readyReplicas": 2}}, readiness=None, probing=True)
    assert after_restart["phase"] == "Ready" and after_restart["readyReplicas"] == 2


def _workload(generation=2, seen=2, replicas=2, updated=2, ready=2, conditions=None):
    status = {"replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready}
    if seen is not None:
        status["observedGeneration"] = seen
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"generation": generation}, "status": status}


def test_up_to_date_only_when_every_replica_runs_the_current_template_and_is_ready():
    from scibox_operator.reconcile.status import rollout_condition

    assert rollout_condition(2, _workload(), True)[0] == "True"
    assert rollout_condition(2, _workload(), False)[1] == "WaitingForModelCache"
    assert rollout_condition(2, None, True)[1] == "RollingOut"
    assert rollout_condition(2, _workload(seen=1), True)[0] == "False", "the controller has not seen it yet"
    assert rollout_condition(2, _workload(updated=1, replicas=3), True)[0] == "False"
    assert rollout_condition(2, _workload(replicas=3), True)[0] == "False", "an old pod still runs"
    assert rollout_condition(2, _workload(ready=1), True)[0] == "False"
    assert rollout_condition(0, _workload(replicas=0, updated=0, ready=0), True)[0] == "True"
    # A LeaderWorkerSet tells its generation on its conditions only.
    lws = _workload(seen=None, conditions=[{"type": "Available", "status": "True", "observedGeneration": 1}])
    assert rollout_condition(2, lws, True)[0] == "False"
    rolling = _workload(seen=None, conditions=[{"type": "UpdateInProgress", "status": "True", "observedGeneration": 2}])
    assert rollout_condition(2, rolling, True)[0] == "False"
    done = _workload(seen=None, conditions=[{"type": "Available", "status": "True", "observedGeneration": 2}])
    assert rollout_condition(2, done, True)[0] == "True"
