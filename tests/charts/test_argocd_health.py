"""manifests/argocd/health.lua run by real Lua interpreters (Debian's Lua 5.1, and gopher-lua,
the one inside Argo CD) on statuses the operator itself computes
(scibox_operator.reconcile.status.compute_status, probe.summarize_readiness): a change in the operator's
phases, reasons or messages that the health check misreads fails here."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from .argocd import ARGOCD, go_binary, health, lua_binary, to_lua

RUNTIMES = [
    pytest.param("lua5.1", marks=pytest.mark.skipif(lua_binary() is None, reason="apt-get install lua5.1")),
    pytest.param("gopher", marks=pytest.mark.skipif(go_binary() is None, reason="needs the Go toolchain")),
]
# Argo CD's default sandbox has no string library: these cases then fall back (see health.lua).
WITHOUT_STRING_LIBRARY = {"scaling-up": "Degraded"}

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def body(replicas: int = 1, generation: int = 1) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": "m", "namespace": "team", "uid": "u-1", "generation": generation},
            "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1}, "cache": {"size": "1Gi"},
                     "replicas": replicas}}


def plan():
    from scibox_operator.planning.serving_plan import ServingPlan

    return ServingPlan(tensor_parallel_size=1, pipeline_parallel_size=1, gpus_per_replica=1,
                       parallelism_reason="fits one GPU", cache_claim="m-cache", cache_shared=False,
                       cache_size="1Gi", image="vllm/vllm-openai:v0.32.0")


def probe(reason: str, url: str = "http://127.100.0.1:8000"):
    from scibox_operator.readiness.verdicts import ProbeReason, ProbeResult

    r = ProbeReason(reason)
    return ProbeResult(ready=r is ProbeReason.SERVING, reason=r, message=f"{url}: {reason}", latency_s=0.01,
                       base_url=url)


def with_status(replicas: int = 1, *, generation: int = 1, spec: dict | None = None, **kwargs) -> dict:
    from scibox_operator.api.spec import parse
    from scibox_operator.reconcile.status import compute_status

    obj = body(replicas, generation)
    obj["spec"].update(spec or {})
    obj["status"] = compute_status(parse(obj), current=None, now=NOW, **kwargs)
    return obj


def deployed(replicas: int, reasons: list[str], *, updated: int | None = None, spec: dict | None = None) -> dict:
    """`updated`: replicas on the current template (all of them unless a rollout is under way)."""
    from scibox_operator.readiness.verdicts import summarize_readiness
    from scibox_operator.reconcile.status import CacheState

    results = [probe(r, f"http://127.100.0.{i}:8000") for i, r in enumerate(reasons)]
    updated = replicas if updated is None else updated
    deployment = {"metadata": {"generation": 2},
                  "status": {"observedGeneration": 2, "replicas": replicas + (replicas - updated),
                             "readyReplicas": replicas, "updatedReplicas": updated}}
    return with_status(replicas, plan=plan(), cache=CacheState(True, reason="Downloaded", message="done"),
                       deployment=deployment, readiness=summarize_readiness(results, replicas), probing=True,
                       spec=spec)


def cache(**state) -> dict:
    from scibox_operator.reconcile.status import CacheState

    return with_status(plan=plan(), cache=CacheState(**state))


def failed(reason: str) -> dict:
    from scibox_operator.reconcile.status import Failure

    return with_status(failure=Failure(reason, f"{reason}: explained"))


CASES = {
    # name: (object factory, expected Argo CD status, expected phase or None)
    "not-reconciled-yet": (lambda: body(), "Progressing", None),
    "downloading": (lambda: cache(complete=False, active=True, reason="Downloading", message="job running"),
                    "Progressing", "Downloading"),
    "download-pending": (lambda: cache(complete=False, reason="DownloadPending", message="creating"),
                         "Progressing", "Pending"),
    "download-failed": (lambda: cache(complete=False, failed=True, reason="DownloadFailed", message="gave up"),
                        "Degraded", "Failed"),
    "invalid-spec": (lambda: failed("InvalidSpec"), "Degraded", "Failed"),
    "no-gpus-fit": (lambda: failed("InsufficientGPUs"), "Degraded", "Failed"),
    "no-pod-address-yet": (lambda: deployed(1, []), "Progressing", "Deploying"),
    "loading": (lambda: deployed(1, ["Loading"]), "Progressing", "Deploying"),
    "engine-down": (lambda: deployed(1, ["EngineDown"]), "Degraded", "Deploying"),
    "wrong-api-key": (lambda: deployed(1, ["Unauthorized"]), "Degraded", "Deploying"),
    "model-missing": (lambda: deployed(1, ["ModelMissing"]), "Degraded", "Deploying"),
    "serving": (lambda: deployed(2, ["Serving", "Serving"]), "Healthy", "Ready"),
    "rolling-out": (lambda: deployed(2, ["Serving", "Serving"], updated=1), "Progressing", "Ready"),
    "scaling-up": (lambda: deployed(2, ["Serving", "Loading"]), "Progressing", "Degraded"),
    "one-replica-crashed": (lambda: deployed(3, ["Serving", "EngineDown", "Loading"]), "Degraded", "Degraded"),
    "scaled-to-zero": (lambda: deployed(0, []), "Healthy", "Stopped"),
    # the autoscaler stopped an idle model: nothing is wrong, it wakes on demand
    "idle-scaled-to-zero": (lambda: deployed(0, [], spec={"autoscaling": {"maxReplicas": 2,
                                                                          "scaleToZero": {"idleSeconds": 60}}}),
                            "Suspended", "ScaledToZero"),
}


@pytest.mark.parametrize("open_libs", [True, False], ids=["open-libs", "default-sandbox"])
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_health_follows_the_operators_status(name, runtime, open_libs):
    factory, expected, phase = CASES[name]
    if not open_libs:
        expected = WITHOUT_STRING_LIBRARY.get(name, expected)
    obj = factory()
    if phase is not None:
        assert obj["status"]["phase"] == phase, "the operator's phase for this case changed"
    status, message = health(obj, runtime=runtime, open_libs=open_libs)
    assert status == expected, (obj.get("status"), message)
    assert message, "Argo CD shows the message next to the status"


def test_message_is_the_ready_condition_message():
    obj = deployed(1, ["Unauthorized"])
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert health(obj) == ("Degraded", ready["message"])


def test_a_spec_change_not_yet_observed_is_progressing_even_when_ready():
    obj = deployed(1, ["Serving"])
    assert health(obj)[0] == "Healthy"
    obj["metadata"]["generation"] = 2
    assert health(obj) == ("Progressing", "Waiting for the operator to observe generation 2")


def test_unknown_phase_is_progressing_not_an_error():
    obj = deployed(1, ["Serving"])
    obj["status"]["phase"] = "SomethingNew"
    assert health(obj)[0] == "Progressing"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_argo_style_test_cases_in_testdata(runtime):
    """manifests/argocd/health_test.yaml, in Argo CD's resource_customizations format, with the
    libraries argocd-cm-health.yaml turns on."""
    spec = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())
    assert spec["tests"]
    for case in spec["tests"]:
        obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
        assert health(obj, runtime=runtime) == (case["healthStatus"]["status"], case["healthStatus"]["message"]), \
            case["inputPath"]


def test_argocd_config_turns_on_the_libraries_the_script_needs():
    cm = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert cm["data"]["resource.customizations.useOpenLibs.scibox.io_VLLMDeployment"] == "true"
    assert cm["data"]["resource.customizations.health.scibox.io_VLLMDeployment"] == (ARGOCD / "health.lua").read_text()


def test_testdata_is_what_the_operator_writes():
    """The testdata statuses are regenerated from the operator's code when they drift."""
    for name, path in TESTDATA.items():
        current = yaml.safe_load((ARGOCD / "testdata" / path).read_text())
        expected = CASES[name][0]()
        assert current["status"]["phase"] == expected["status"]["phase"], path
        assert [(c["type"], c["status"], c["reason"], c["message"]) for c in current["status"]["conditions"]] == \
            [(c["type"], c["status"], c["reason"], c["message"]) for c in expected["status"]["conditions"]], path


TESTDATA = {"serving": "healthy.yaml", "rolling-out": "rolling-out.yaml", "scaling-up": "progressing.yaml", "download-failed": "degraded.yaml",
            "engine-down": "degraded-engine-down.yaml", "downloading": "progressing-download.yaml"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_script_error_is_reported_not_swallowed(runtime, tmp_path):
    broken = tmp_path / "broken.lua"
    broken.write_text("return {status = os.getenv('HOME')}\n")  # no os library in Argo CD's sandbox
    with pytest.raises(RuntimeError, match="health.lua failed"):
        health(body(), script=broken, runtime=runtime, open_libs=False)
    strings = tmp_path / "strings.lua"
    strings.write_text('return {status = ("Healthy"):lower()}\n')  # nor string methods
    with pytest.raises(RuntimeError, match="health.lua failed"):
        health(body(), script=strings, runtime=runtime, open_libs=False)
    assert health(body(), script=strings, runtime=runtime, open_libs=True) == ("Unknown",
                                                                               "Lua returned an invalid health status")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_objects_reach_lua_intact(runtime, tmp_path):
    value = {"message": 'quote " backslash \\ newline \n tab \t unicode \u00e9 end', "n": [1, 2.5, True],
             "absent": None}
    script = tmp_path / "echo.lua"
    script.write_text('return {status = "Healthy", message = obj.message .. "|" .. tostring(obj.n[2]) .. "|" '
                      '.. tostring(#obj.n) .. "|" .. tostring(obj.absent)}\n')
    assert health(value, script=script, runtime=runtime) == ("Healthy", value["message"] + "|2.5|3|nil")
    assert to_lua(None) == "nil" and to_lua([]) == "{}"


def write_testdata() -> None:  # pragma: no cover - run by hand: python -m tests.charts.test_argocd_health
    tests = []
    for name, path in TESTDATA.items():
        obj = CASES[name][0]()
        (ARGOCD / "testdata").mkdir(exist_ok=True)
        (ARGOCD / "testdata" / path).write_text(yaml.safe_dump(obj, sort_keys=False))
        status, message = health(obj)
        tests.append({"healthStatus": {"status": status, "message": message}, "inputPath": f"testdata/{path}"})
    (ARGOCD / "health_test.yaml").write_text(yaml.safe_dump({"tests": tests}, sort_keys=False, width=120))


if __name__ == "__main__":
    write_testdata()
