"""LoRA adapters, the pure parts (issue 24): the spec's checks, what is rendered (LoRA switches
in the pod template, never the adapter list), the adapters' download Jobs and their removal,
the per-pod load/unload planner and status. The real server: tests/e2e/test_lora_adapters.py."""

from __future__ import annotations

import json

import pytest

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.engine.vllm_args import EngineSettings, render_vllm_args, validate_env, validate_extra_args
from scibox_operator.planning.adapters import WantedAdapter, adapter_job_name, wanted_adapters
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name
from scibox_operator.readiness.adapters import loaded_adapters, plan_pod_adapters
from scibox_operator.reconcile.adapters import adapter_download_states, adapter_status
from scibox_operator.reconcile.desired import Observed, desired
from scibox_operator.reconcile.diff import RENDER_HASH_ANNOTATION
from scibox_operator.reconcile.status import CacheState
from tests.vllm_parser import parse as vllm_parse
from tests.vllm_parser import vllm_parser  # noqa: F401 - a fixture

CACHED = CacheState(True, reason="Downloaded")
A = {"name": "alpha", "source": "org/lora-a"}
B = {"name": "beta", "source": "org/lora-b", "revision": "v2"}


def vd_of(**spec):
    base = {"model": {"name": "org/model", "servedModelName": "base"}, "resources": {"gpus": 1}}
    base.update(spec)
    return parse({"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
                  "metadata": {"name": "m", "namespace": "ns", "uid": "uid-1", "generation": 2}, "spec": base})


def plan_of(vd):
    return ServingPlan(1, 1, 1, "test", cache_claim_name(vd, False), False, "10Gi", "img:1")


def want_of(vd, jobs=(), reports=None, cache=CACHED):
    return desired(vd, plan_of(vd), Observed(
        children={}, cache=cache, adapter_jobs={j["metadata"]["name"]: j for j in jobs},
        adapter_reports=reports or {}))


def child(want, kind, name=None):
    return next((c for c in want.children if c["kind"] == kind and (name is None or c["metadata"]["name"] == name)),
                None)


def completed(job, failed=False, message=None):
    job = json.loads(json.dumps(job))
    job["status"] = {"conditions": [{"type": "Failed" if failed else "Complete", "status": "True",
                                     **({"message": message} if message else {})}]}
    return job


# --- the spec --------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,text", [
    ({"adapters": [A, dict(A, source="org/other")]}, "adapter names must be unique"),
    ({"adapters": [dict(A, name="base")]}, "is the base model's served name"),
    ({"engine": {"maxLoras": 1}, "adapters": [A, B]}, "at most 1 (engine.maxLoras)"),
    ({"adapters": [dict(A, name=f"a{i}") for i in range(5)]}, "at most 4 (engine.maxLoras, default)"),
    ({"adapters": [dict(A, name="Not_DNS")]}, "spec.adapters.0.name"),
    ({"adapters": [dict(A, source="not a repo")]}, "spec.adapters.0.source"),
    ({"engine": {"maxLoraRank": 12}}, "spec.engine.maxLoraRank"),
    ({"model": {"name": "pvc://c/m"}, "adapters": [dict(A, source="pvc://other/l")]}, "on the pvc:// model's own"),
    ({"model": {"name": "pvc://c/m"}, "adapters": [dict(A, source="pvc://c/../x")]}, "without '..'"),
    ({"model": {"name": "pvc://c/m"}, "adapters": [A]}, "a hub adapter is downloaded into the model cache"),
    ({"model": {"name": "org/model", "task": "embed"}, "adapters": [A]}, "adapters need model.task generate"),
])
def test_bad_adapter_specs_are_refused_with_the_field(spec, text):
    with pytest.raises(InvalidSpec) as refused:
        vd_of(**spec)
    assert text in refused.value.message


def test_good_adapter_specs_parse_with_their_paths_and_jobs():
    vd = vd_of(engine={"maxLoras": 2}, adapters=[A, B])
    assert [(w.name, w.path) for w in wanted_adapters(vd)] == [("alpha", "org--lora-a/main"),
                                                               ("beta", "org--lora-b/v2")]
    assert len({w.job for w in wanted_adapters(vd)}) == 2
    pvc = vd_of(model={"name": "pvc://claim/models/base"}, adapters=[dict(A, source="pvc://claim/loras/a/")])
    assert wanted_adapters(pvc) == (WantedAdapter("alpha", "loras/a", None),)
    # A new revision is a new Job (its own folder and marker in the cache).
    assert adapter_job_name(vd, vd.spec.adapters[1]) != adapter_job_name(vd_of(adapters=[dict(B, revision="v3")]),
                                                                         vd_of(adapters=[dict(B, revision="v3")]).spec.adapters[0])


def test_lora_flags_and_env_are_owned():
    assert validate_extra_args(["--enable-lora"]) and validate_extra_args(["--max-loras=8"])
    assert validate_extra_args(["--max-lora-rank", "64"]) and validate_extra_args(["--lora-modules", "x=/y"])
    assert validate_env({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})


@pytest.mark.vllm
def test_vllm_reads_the_rendered_lora_switches(vllm_parser):  # noqa: F811
    args = vllm_parse(vllm_parser, render_vllm_args(EngineSettings(model="/m", max_loras=3, max_lora_rank=8)))
    assert (args.enable_lora, args.max_loras, args.max_lora_rank) == (True, 3, 8)
    assert not vllm_parse(vllm_parser, render_vllm_args(EngineSettings(model="/m"))).enable_lora


# --- rendering: adding or removing an adapter never touches the pod template ---------------------

def test_the_adapter_list_never_reaches_the_pod_template():
    with_a = child(want_of(vd_of(engine={"maxLoras": 4}, adapters=[A])), "Deployment")
    with_ab = child(want_of(vd_of(engine={"maxLoras": 4}, adapters=[A, B])), "Deployment")
    none = child(want_of(vd_of(engine={"maxLoras": 4})), "Deployment")
    assert with_a == with_ab == none  # byte-identical, render hash included
    container = with_a["spec"]["template"]["spec"]["containers"][0]
    assert {"--enable-lora", "--max-loras=4", "--max-lora-rank=16"} <= set(container["args"])
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    assert container["workingDir"] == "/models"
    assert '"alpha"' not in json.dumps(with_ab) and "lora-a" not in json.dumps(with_ab)


def test_without_lora_the_switches_are_removed():
    lora = child(want_of(vd_of(adapters=[A])), "Deployment")  # maxLoras unset: the default 4
    plain = child(want_of(vd_of()), "Deployment")
    args = lora["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-loras=4" in args
    container = plain["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if "lora" in a]
    assert "workingDir" not in container and all("LORA" not in e["name"] for e in container["env"])
    assert lora["metadata"]["annotations"][RENDER_HASH_ANNOTATION] != plain["metadata"]["annotations"][RENDER_HASH_ANNOTATION]


# --- the adapters' download Jobs ----------------------------------------------------------------------

def test_each_hub_adapter_gets_a_download_job_once_the_base_is_cached():
    vd = vd_of(engine={"maxLoras": 2, "maxLoraRank": 8}, adapters=[A, B])
    waiting = want_of(vd, cache=CacheState(False, active=True, reason="Downloading"))
    assert [c for c in waiting.children if c["kind"] == "Job" and "lora" in c["metadata"]["name"]] == []
    want = want_of(vd)
    jobs = {w.name: child(want, "Job", w.job) for w in wanted_adapters(vd)}
    assert all(jobs.values()), [c["metadata"]["name"] for c in want.children]
    env = {e["name"]: e.get("value") for e in jobs["beta"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MODEL_ID"], env["MODEL_REVISION"], env["ADAPTER_MAX_RANK"]) == ("org/lora-b", "v2", "8")
    assert env["ADAPTER_BASE_DIR"] == "/models/org--model/main"
    assert jobs["beta"]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert jobs["beta"]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        plan_of(vd).cache_claim
    assert 9 in jobs["beta"]["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"]  # bad_adapter
    assert want == want_of(vd)  # same inputs, same children


def test_a_removed_adapters_job_is_deleted_and_a_finished_one_kept():
    vd = vd_of(adapters=[A, B])
    jobs = [completed(child(want_of(vd), "Job", w.job)) for w in wanted_adapters(vd)]
    kept = want_of(vd, jobs=jobs)
    assert not [r for r in kept.removals if r[0] == "Job"]
    assert not [c for c in kept.children if c["kind"] == "Job"]  # finished: nothing to write
    only_b = want_of(vd_of(adapters=[B]), jobs=jobs)
    assert [r for r in only_b.removals if r[0] == "Job"] == [("Job", wanted_adapters(vd)[0].job)]
    none = want_of(vd_of(), jobs=jobs)
    assert sorted(r for r in none.removals if r[0] == "Job") == sorted(("Job", w.job) for w in wanted_adapters(vd))


def test_a_failed_adapter_job_is_retried_only_when_its_inputs_change():
    vd = vd_of(engine={"maxLoraRank": 8}, adapters=[A])
    job = completed(child(want_of(vd), "Job", wanted_adapters(vd)[0].job), failed=True)
    same = want_of(vd, jobs=[job])
    assert not same.removals and not [c for c in same.children if c["kind"] == "Job"]
    raised = want_of(vd_of(engine={"maxLoraRank": 16}, adapters=[A]), jobs=[job])
    assert ("Job", job["metadata"]["name"]) in raised.removals


# --- runtime: what to load and unload on one pod ---------------------------------------------------

def test_the_pod_planner_loads_missing_unloads_removed_and_reloads_a_new_path():
    a, b = WantedAdapter("alpha", "org--a/main", "j1"), WantedAdapter("beta", "org--b/v2", "j2")
    assert plan_pod_adapters((a, b), frozenset({"alpha", "beta"}), {}, {}) == ((a, b), ())
    assert plan_pod_adapters((a, b), frozenset({"alpha"}), {}, {}) == ((a,), ())  # beta still downloading
    assert plan_pod_adapters((b,), frozenset({"beta"}), {"alpha": "/x/org--a/main", "beta": "org--b/v2"}, {}) == \
        ((), ("alpha",))
    moved = WantedAdapter("beta", "org--b/v3", "j3")
    assert plan_pod_adapters((moved,), frozenset({"beta"}), {"beta": "org--b/v2"}, {}) == ((moved,), ("beta",))
    # A load that failed on that path is not retried every round; a new path is tried at once.
    assert plan_pod_adapters((a,), frozenset({"alpha"}), {}, {"alpha": "org--a/main"}) == ((), ())
    assert plan_pod_adapters((a,), frozenset({"alpha"}), {}, {"alpha": "org--a/old"}) == ((a,), ())
    assert plan_pod_adapters((), frozenset(), {}, {}) == ((), ())


def test_loaded_adapters_are_read_from_v1_models():
    body = json.dumps({"data": [{"id": "base", "root": "/models/org--model/main", "parent": None},
                                {"id": "alpha", "root": "org--a/main", "parent": "base"}]})
    assert loaded_adapters(body, "base") == {"alpha": "org--a/main"}
    assert loaded_adapters("not json", "base") == {} and loaded_adapters('{"data": 3}', "base") == {}


def test_status_lists_each_adapter_per_pod_and_a_broken_one_fails_alone():
    vd = vd_of(adapters=[A, B, {"name": "gamma", "source": "org/lora-c"}])
    names = {w.name: w.job for w in wanted_adapters(vd)}
    jobs = {names["alpha"]: completed({"metadata": {"name": names["alpha"]}}),
            names["beta"]: completed({"metadata": {"name": names["beta"]}}),
            names["gamma"]: completed({"metadata": {"name": names["gamma"]}}, failed=True)}
    reports = {names["gamma"]: {"error": "bad_adapter", "message": "adapter rank 16 is over the server's limit 8"}}
    states = adapter_download_states(vd, jobs, reports)
    entries, cond = adapter_status(vd, states, (("alpha", "pod-1", "Loaded", ""),
                                                ("beta", "pod-1", "Failed", "HTTP 500: bad weights")))
    by = {e["name"]: e for e in entries}
    assert by["alpha"]["state"] == "Loaded" and by["alpha"]["pods"] == [{"pod": "pod-1", "state": "Loaded"}]
    assert by["beta"]["state"] == "Failed" and by["beta"]["reason"] == "LoadFailed" and "bad weights" in by["beta"]["message"]
    assert by["gamma"]["state"] == "Failed" and by["gamma"]["reason"] == "DownloadFailed"
    assert "rank 16" in by["gamma"]["message"] and by["gamma"]["downloadJob"] == names["gamma"]
    assert cond[:3] == ("AdaptersReady", "False", "AdapterFailed") and "2/3" in cond[3]
    entries, cond = adapter_status(vd_of(adapters=[A]), adapter_download_states(vd_of(adapters=[A]), jobs, {}),
                                   (("alpha", "pod-1", "Loaded", ""),))
    assert cond[:3] == ("AdaptersReady", "True", "Loaded")
    assert adapter_status(vd_of(), {}, ()) == ([], None)
