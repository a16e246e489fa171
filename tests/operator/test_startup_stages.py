"""status.startup (reconcile/startup.py, pure): each stage of a rollout's start from what the
operator observed; written once, kept across passes and operator restarts, reset per generation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scibox_operator.reconcile.startup import STAGES, StartupInputs, new_stage_values, startup_status

T0 = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=UTC)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name="m-1", uid="u1", created=T0 + timedelta(seconds=3), scheduled=4, running=6):
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": iso(created)},
            "status": {"phase": "Running",
                       "conditions": [{"type": "PodScheduled", "status": "True",
                                       "lastTransitionTime": iso(T0 + timedelta(seconds=scheduled))}],
                       "containerStatuses": [{"name": "vllm", "state": {"running": {
                           "startedAt": iso(T0 + timedelta(seconds=running))}}}]}}


JOB = {"metadata": {"name": "dl"}, "status": {"completionTime": iso(T0 + timedelta(seconds=2))}}
REPORT = {"bytes": 4_000_000, "downloaded_bytes": 4_000_000, "duration_seconds": 1.6, "file_count": 5}


def test_a_new_generation_starts_a_rollout_with_its_planning_time():
    out = startup_status(2, {"generation": 1, "startedAt": "2026-11-30T00:00:00.000Z", "readySeconds": 9.0},
                         now=T0, inputs=StartupInputs(planning_seconds=0.0123), ready=False)
    assert out == {"generation": 2, "startedAt": "2026-12-01T12:00:00.250Z", "planningSeconds": 0.012}


def test_every_stage_of_the_first_new_pod_and_the_total():
    first = startup_status(1, None, now=T0, inputs=StartupInputs(planning_seconds=0.05), ready=False)
    health = T0.timestamp() + 40.75  # 35 s after the container started at 12:00:06 (the .25 truncated)
    marks = {"u1": {"health": health, "serving": health + 0.5}}
    old = pod(name="old", uid="u0", created=T0 - timedelta(hours=1))  # from before the rollout
    inputs = StartupInputs(planning_seconds=0.9, download_report=REPORT, job=JOB,
                           pods=(old, pod()), marks=marks)
    now = T0 + timedelta(seconds=41.5)
    out = startup_status(1, first, now=now, inputs=inputs, ready=True)
    assert out["planningSeconds"] == 0.05  # the rollout's first pass, not this one
    assert out["pod"] == "m-1"
    assert out["downloadSeconds"] == 1.6 and out["downloadBytes"] == 4_000_000
    assert out["downloadBytesPerSecond"] == 2_500_000
    assert out["podCreationSeconds"] == 2.75  # created at T0+3 s, rollout at T0+0.25 s
    assert out["schedulingSeconds"] == 1.0 and out["containerStartSeconds"] == 2.0
    assert out["engineLoadSeconds"] == 35.0 and out["firstCompletionSeconds"] == 0.5
    assert out["readySeconds"] == 41.5
    assert new_stage_values(first, out).keys() == set(STAGES) - {"planning"}
    # the same pass again: the same block, nothing new to observe (no status write)
    again = startup_status(1, out, now=now + timedelta(minutes=5), inputs=inputs, ready=True)
    assert again == out and new_stage_values(out, again) == {}
    # after an operator restart the prober's readings are gone; the status keeps them
    restarted = startup_status(1, out, now=now + timedelta(minutes=9),
                               inputs=StartupInputs(pods=(old, pod())), ready=True)
    assert restarted == out


def test_pod_stages_wait_for_the_server_to_answer_so_loading_writes_no_extra_status():
    first = startup_status(1, None, now=T0, inputs=StartupInputs(), ready=False)
    loading = startup_status(1, first, now=T0 + timedelta(seconds=20), inputs=StartupInputs(pods=(pod(),)),
                             ready=False)
    assert loading == first
    # without a probe (SCIBOX_PROBE=off) the Ready pass still reports what Kubernetes saw
    ready = startup_status(1, first, now=T0 + timedelta(seconds=50), inputs=StartupInputs(pods=(pod(),)), ready=True)
    assert ready["schedulingSeconds"] == 1.0 and "engineLoadSeconds" not in ready and ready["readySeconds"] == 50.0


def test_an_old_download_or_no_new_pod_is_not_reported_for_a_later_rollout():
    later = T0 + timedelta(hours=2)
    out = startup_status(3, None, now=later, inputs=StartupInputs(download_report=REPORT, job=JOB, pods=(pod(),),
                                                                  marks={"u1": {"health": 1.0}}), ready=True)
    assert "downloadSeconds" not in out and "pod" not in out
    assert out["readySeconds"] == 0.0  # nothing to roll: Ready at once


def test_a_cached_model_reports_zero_bytes_fetched():
    report = {"bytes": 4_000_000, "downloaded_bytes": 0, "duration_seconds": 0.2, "cached": True}
    out = startup_status(1, None, now=T0, inputs=StartupInputs(download_report=report, job=JOB), ready=False)
    assert out["downloadCached"] is True and out["downloadBytes"] == 0 and out["downloadBytesPerSecond"] == 0


def test_when_the_reported_pod_goes_the_next_pods_stages_replace_its_own():
    first = startup_status(1, None, now=T0, inputs=StartupInputs(), ready=False)
    marks = {"u1": {"health": T0.timestamp() + 30}, "u2": {"health": T0.timestamp() + 70}}
    a = startup_status(1, first, now=T0 + timedelta(seconds=31), inputs=StartupInputs(pods=(pod(),), marks=marks),
                       ready=False)
    assert a["pod"] == "m-1" and "engineLoadSeconds" in a
    b_pod = pod(name="m-2", uid="u2", created=T0 + timedelta(seconds=40), scheduled=41, running=42)
    b = startup_status(1, a, now=T0 + timedelta(seconds=71), inputs=StartupInputs(pods=(b_pod,), marks=marks),
                       ready=True)
    assert b["pod"] == "m-2" and b["engineLoadSeconds"] == 28.25 and b["podCreationSeconds"] == 39.75
    assert "firstCompletionSeconds" not in b


def test_the_old_pods_answers_during_a_rollout_do_not_make_it_ready():
    started = startup_status(2, None, now=T0, inputs=StartupInputs(), ready=False)
    old = pod(name="old", uid="u0", created=T0 - timedelta(hours=1))
    # first passes: the old pod still serves (Ready), the workload is not rolled out
    during = startup_status(2, started, now=T0 + timedelta(seconds=1), inputs=StartupInputs(pods=(old,)),
                            ready=True, rolled_out=False)
    assert "readySeconds" not in during
    new = pod()
    loading = startup_status(2, during, now=T0 + timedelta(seconds=20), ready=True, rolled_out=False,
                             inputs=StartupInputs(pods=(old, new), marks={"u0": {"health": 1.0, "serving": 2.0}}))
    assert "readySeconds" not in loading
    served = startup_status(2, loading, now=T0 + timedelta(seconds=41), ready=True, rolled_out=False,
                            inputs=StartupInputs(pods=(old, new), marks={"u1": {"health": T0.timestamp() + 40,
                                                                               "serving": T0.timestamp() + 40.5}}))
    assert served["readySeconds"] == 41.0 and served["pod"] == "m-1"
    # an edit that makes no new pod: over once the workload says every replica is current
    nothing = startup_status(3, None, now=T0, inputs=StartupInputs(pods=(old,)), ready=True, rolled_out=True)
    assert nothing["readySeconds"] == 0.0


def test_the_status_patch_removes_the_last_rollouts_stages():
    from scibox_operator.reconcile.reconciler import status_patch

    old = {"phase": "Ready", "plan": {"a": 1}, "startup": {"generation": 1, "pod": "p", "engineLoadSeconds": 40.0,
                                                           "readySeconds": 50.0}}
    new = {"phase": "Deploying", "plan": {"a": 1}, "startup": {"generation": 2, "startedAt": "x"}}
    patch = status_patch(old, new)
    assert patch["startup"] == {"generation": 2, "startedAt": "x", "pod": None, "engineLoadSeconds": None,
                                "readySeconds": None}
    assert patch["phase"] == "Deploying" and patch["plan"] == {"a": 1}
    assert status_patch({"startup": {"a": 1}, "gone": 1}, {"phase": "P"}) == {"phase": "P", "gone": None,
                                                                              "startup": None}
