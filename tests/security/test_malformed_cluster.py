"""Issue 10's acceptance: malformed VLLMDeployments against the real API server and operator.

Every case of malformed.yaml is sent to the real kube-apiserver (strict field validation, as
kubectl does) in one namespace, next to one valid VLLMDeployment. Each case must be refused by
the API server with a message naming the problem, or be admitted and end Ready=False (phase
Failed) with the expected reason; the operator process keeps running without a single crashed
reconcile; the valid VLLMDeployment converges as if it were alone.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import pytest

from tests.operator.kubehelp import condition, wait_for

from .corpus import BASE_SPEC, load_cases

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "scibox.io", "v1alpha1", "vllmdeployments"
# Cases with a policy of their own need an operator configured so: checked offline
# (test_corpus_offline) and in test_cluster_policies, not against the session's operator.
CASES = [c for c in load_cases() if not c.policy]
VALID_NAME = "valid-beside-the-corpus"
MANAGED = "app.kubernetes.io/managed-by=scibox-vllm-operator"
# How long admitted cases get to reach their verdict; gap cases only delay the end of the run.
SETTLE_TIMEOUT = 150


@dataclass
class CorpusRun:
    namespace: str
    refusals: dict[str, tuple[int, str]] = field(default_factory=dict)  # case id -> (HTTP status, message)
    admitted: set[str] = field(default_factory=set)
    objects: dict[str, dict] = field(default_factory=dict)  # name -> object after settling
    settle_seconds: float = 0.0
    log_text: str = ""


def _settled(obj: dict) -> bool:
    status = obj.get("status") or {}
    return (status.get("observedGeneration") == obj["metadata"].get("generation")
            and status.get("phase") is not None and condition(obj, "Ready") is not None)


@pytest.fixture(scope="module")
def corpus_run(cluster, kube, operator):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    ns = f"t-corpus-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns, labels={"scibox.io/test": "true"})))
    wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=60, what="default ServiceAccount")
    log_offset = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    run = CorpusRun(ns)
    try:
        valid = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VLLMDeployment",
                 "metadata": {"name": VALID_NAME}, "spec": BASE_SPEC}
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, valid, field_validation="Strict")
        for case in CASES:
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, case.body(ns),
                                                       field_validation="Strict")
            except ApiException as exc:
                try:
                    message = json.loads(exc.body).get("message", exc.body)
                except (TypeError, ValueError):
                    message = str(exc.body or exc.reason)
                run.refusals[case.id] = (exc.status, message)
            else:
                run.admitted.add(case.id)

        names = {c.name for c in CASES if c.id in run.admitted} | {VALID_NAME}
        expected_to_settle = {c.name for c in CASES if c.id in run.admitted and not c.gap} | {VALID_NAME}
        started = time.monotonic()

        def snapshot() -> dict[str, dict]:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
            return {o["metadata"]["name"]: o for o in items if o["metadata"]["name"] in names}

        # A case that must fail is settled once Failed (some only fail after their download, when
        # the API server refuses the Deployment); the valid one once its Deployment exists.
        must_fail = {c.name for c in CASES if c.id in run.admitted and not c.gap}

        def done(name: str, obj: dict) -> bool:
            if not _settled(obj):
                return False
            if name in must_fail:
                return obj["status"]["phase"] == "Failed"
            return obj["status"]["phase"] not in ("Pending", "Downloading")

        def all_settled():
            objs = snapshot()
            return objs if all(n in objs and done(n, objs[n]) for n in expected_to_settle) else None

        run.objects = wait_for(all_settled, timeout=SETTLE_TIMEOUT, interval=1.0,
                               what="every admitted case to report its verdict")
        run.settle_seconds = time.monotonic() - started
        if any(c.gap for c in CASES if c.id in run.admitted):
            time.sleep(10)  # what the gap cases do in this time is what the xfail records
            run.objects = snapshot()
        with open(operator.log_path, errors="replace") as log:
            log.seek(log_offset)
            run.log_text = log.read()
        for case_id, (status, message) in sorted(run.refusals.items()):
            print(f"refused {case_id}: {status} {message[:300]}")
        for case in CASES:
            ready = condition(run.objects.get(case.name) or {}, "Ready")
            if case.id in run.admitted:
                print(f"admitted {case.id}: {ready and (ready['reason'], ready['message'][:300])}")
        print(f"\ncorpus: {len(CASES)} cases, {len(run.refusals)} refused by the API server, "
              f"{len(run.admitted)} admitted; verdicts after {run.settle_seconds:.1f}s")
        yield run
    finally:
        core.delete_namespace(ns)


def _case_param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.gap)] if case.gap else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_case_param(c) for c in CASES])
def test_each_malformed_case_is_refused_or_fails_with_its_reason(corpus_run, case):
    if case.rejected is not None:
        assert case.id in corpus_run.refusals, f"{case.id}: admitted by the API server"
        status, message = corpus_run.refusals[case.id]
        assert status in (400, 413, 422), (status, message)
        assert case.rejected in message, f"{case.id}: the API server said {message[:500]!r}"
        return
    assert case.id in corpus_run.admitted, f"{case.id}: refused by the API server: {corpus_run.refusals.get(case.id)}"
    obj = corpus_run.objects.get(case.name)
    assert obj is not None and _settled(obj), f"{case.id}: no status for generation: {obj and obj.get('status')}"
    ready = condition(obj, "Ready")
    assert (ready["status"], ready["reason"], obj["status"]["phase"]) == ("False", case.ready_false, "Failed"), ready
    assert case.message is None or case.message in ready["message"], ready["message"]
    assert ready["message"].strip(), "a reason without an explanation"


def test_the_operator_survives_the_corpus_without_a_crashed_reconcile(corpus_run, operator):
    assert operator.proc is not None and operator.proc.poll() is None, "the operator process exited"
    crashed = [line for line in corpus_run.log_text.splitlines() if "crashed" in line or "Traceback" in line]
    assert not crashed, "reconciles crashed:\n" + "\n".join(crashed[:20])
    assert 'scibox_operator_reconciles_total{result="ok"}' in operator.metrics()


def test_a_valid_vllmdeployment_beside_the_corpus_converges(cluster, corpus_run):
    ns = corpus_run.namespace
    obj = corpus_run.objects[VALID_NAME]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["phase"] != "Failed", obj["status"]
    ready = condition(obj, "Ready")
    # kwok pods never serve: the operator's probe finds the engine down, which is the verdict
    # a healthy object gets here (and not a spec or plan failure).
    assert ready["reason"] in ("EngineDown", "Pending", "WaitingForModelCache", "Deploying", "Starting"), ready
    uid = obj["metadata"]["uid"]
    for kind in ("deployments", "services", "jobs", "persistentvolumeclaims"):
        items = json.loads(cluster.kubectl("get", kind, "-n", ns, "-l", MANAGED, "-o", "json").stdout)["items"]
        mine = [i for i in items if i["metadata"]["name"].startswith(VALID_NAME)]
        assert len(mine) == 1, f"{kind}: {[i['metadata']['name'] for i in items]}"
        if kind != "persistentvolumeclaims":  # a Retain cache claim outlives its owner on purpose
            assert [r["uid"] for r in mine[0]["metadata"]["ownerReferences"]] == [uid]
    # No malformed case got a workload (but the known gaps): only the valid one has a Deployment.
    deployments = json.loads(cluster.kubectl("get", "deployments", "-n", ns, "-o", "json").stdout)["items"]
    gaps = {c.name for c in CASES if c.gap}
    assert [d["metadata"]["name"] for d in deployments if d["metadata"]["name"] not in gaps] == [VALID_NAME]
