"""VLLMGateway on real processes: vLLM's own router (the real `vllm-router` binary, run by the
real runner as the router pod's process) discovers real vLLM CPU server pods through the real
API server, with the ServiceAccount and Role the operator rendered, and forwards to them.

- two VLLMDeployments of two different tiny models (served as `alpha`, with 2 replicas, and
  `beta`), one VLLMGateway: /v1/models through it lists both, completions for each land on that
  model's servers (their own request counters say so), an unknown model gets an error at once;
- one of alpha's replicas deleted under load: the router drops it when the pod's deletion is
  watched; no request sent after that fails (the interval is measured and printed);
- bad input (no vLLM needed): a selector matching nothing, an unknown policy (the CRD refuses
  it), a missing API key Secret.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import API, vllmd_body
from tests.fixtures.cluster import RWX_STORAGE_CLASS, apply_rwx_storage_class
from tests.fixtures.hub import TINY_REPO
from tests.fixtures.tiny_model import make_tiny_model
from tests.loopback import NO_PROXY
from tools.localcluster.nodes import REAL_RUNNER_TOLERATION

pytestmark = [pytest.mark.cluster]

SECOND_REPO = "scibox/tiny-llama-b"
RUNNER_PLACEMENT = {"nodeSelector": {"scibox.io/real-runner": "true"}, "tolerations": [dict(REAL_RUNNER_TOLERATION)]}


def http(url: str, payload: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gateway_body(name: str, **spec) -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMGateway", "metadata": {"name": name},
            "spec": {**RUNNER_PLACEMENT, "resources": {"cpu": "100m", "memory": "256Mi"}, **spec}}


def gateway(e2e, ns: str, name: str) -> dict:
    return e2e.rest.get_or_none(f"{API}/namespaces/{ns}/vllmgateways/{name}") or {}


def ready_of(e2e, ns: str, name: str) -> dict:
    return next((c for c in (gateway(e2e, ns, name).get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"), {})


def create(e2e, ns: str, body: dict, plural: str) -> None:
    e2e.rest.create(f"{API}/namespaces/{ns}/{plural}", body)


def served_requests(pod_ip: str) -> float:
    """The server's own count of finished requests (vllm:request_success_total, all reasons)."""
    _, text = http(f"http://{pod_ip}:8000/metrics", timeout=10)
    return sum(float(m.group(1)) for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


def pod_ips(e2e, ns: str, selector: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in e2e.pods(ns, selector)
            if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")}


@pytest.fixture(scope="module")
def second_model(hub_mirror, tmp_path_factory):
    """A second tiny model (other random weights), served by the session's hub mirror."""
    hub_mirror.add_repo(SECOND_REPO, make_tiny_model(tmp_path_factory.mktemp("tiny-llama-b"), seed=1))
    return SECOND_REPO


@pytest.fixture(scope="module")
def rwx(e2e_cluster):
    yield apply_rwx_storage_class(e2e_cluster.cluster)
    e2e_cluster.cluster.kubectl("delete", "storageclass", RWX_STORAGE_CLASS, "--ignore-not-found")


def model_body(name: str, repo: str, hub: str, *, replicas: int = 1, storage_class: str | None = None) -> dict:
    body = vllmd_body(name, repo, hub)
    body["metadata"]["labels"] = {"gateway": "demo"}
    body["spec"]["replicas"] = replicas
    # three servers and the router share the node's 2 cores (requests only: nothing is throttled)
    body["spec"]["resources"].update({"cpu": "500m", "memory": "2Gi"})
    if storage_class:
        body["spec"]["cache"]["storageClassName"] = storage_class
    return body


@pytest.mark.vllm
@pytest.mark.slow
def test_one_endpoint_routes_two_models_and_drops_a_deleted_replica(e2e_cluster, e2e_operator, e2e_namespace,
                                                                    hub_mirror, second_model, rwx):
    e2e, ns = e2e_cluster, e2e_namespace
    create(e2e, ns, model_body("alpha", TINY_REPO, hub_mirror.endpoint, replicas=2, storage_class=rwx), "vllmdeployments")
    create(e2e, ns, model_body("beta", second_model, hub_mirror.endpoint), "vllmdeployments")
    create(e2e, ns, gateway_body("gw", selector={"matchLabels": {"gateway": "demo"}}, policy="round_robin"),
           "vllmgateways")
    started = time.monotonic()

    def serving():
        st = gateway(e2e, ns, "gw").get("status") or {}
        workers = {m["name"]: m["readyWorkers"] for m in st.get("models") or []}
        return st if ready_of(e2e, ns, "gw").get("status") == "True" and workers == {"alpha": 2, "beta": 1} else None

    status = e2e.wait_for("gateway Ready with alpha x2 and beta x1", serving, timeout=900, ns=ns, every=2)
    print(f"\ngateway: apply -> Ready with 3 workers {time.monotonic() - started:.1f}s")
    assert status["endpoint"] == f"http://gw.{ns}.svc:8000/v1" and status["policy"] == "round_robin"
    router_ip = next(iter(pod_ips(e2e, ns, "app.kubernetes.io/component=router").values()))
    base = f"http://{router_ip}:8000"

    # the router found all three pods through the API server (its Role: pods of this namespace)
    def discovered():
        code, text = http(f"{base}/v1/models", timeout=10)
        return code == 200 and set(json.loads(text)["models"]) == {"alpha", "beta"} and text
    print("router /v1/models:", e2e.wait_for("both models listed by the router", discovered, timeout=120, ns=ns))

    alpha = pod_ips(e2e, ns, "app.kubernetes.io/instance=alpha,app.kubernetes.io/component=server")
    beta = pod_ips(e2e, ns, "app.kubernetes.io/instance=beta,app.kubernetes.io/component=server")
    assert len(alpha) == 2 and len(beta) == 1
    before = {ip: served_requests(ip) for ip in [*alpha.values(), *beta.values()]}
    for model, n in (("alpha", 4), ("beta", 3)):
        for _ in range(n):
            code, text = http(f"{base}/v1/completions", {"model": model, "prompt": "hello world", "max_tokens": 2})
            assert code == 200, text
            assert json.loads(text)["model"] == model
    after = {ip: served_requests(ip) for ip in before}
    delta = {ip: after[ip] - before[ip] for ip in before}
    print("requests served per pod:", {name: delta[ip] for name, ip in [*alpha.items(), *beta.items()]})
    assert sum(delta[ip] for ip in alpha.values()) == 4 and sum(delta[ip] for ip in beta.values()) == 3
    assert all(delta[ip] == 2 for ip in alpha.values()), "round_robin spreads alpha over both replicas"

    # a model nobody serves: vllm-router (multi-model mode) has no worker set for it and hands the
    # request to some worker, whose vLLM answers 404 at once (no hang)
    code, text = http(f"{base}/v1/completions", {"model": "nope", "prompt": "hello", "max_tokens": 1}, timeout=30)
    print("unknown model:", code, text[:200])
    assert code == 404 and "nope" in text

    # beta scaled to zero (what the autoscaling issue does): the gateway still lists it, with no
    # ready worker; vllm-router 0.1.17 forgets a model with its last worker, so its requests go to
    # another model's worker, whose vLLM answers 404 at once (no 503 + Retry-After to wait on)
    e2e.rest.request("PATCH", f"{API}/namespaces/{ns}/vllmdeployments/beta", {"spec": {"replicas": 0}},
                     content_type="application/merge-patch+json")

    def beta_at_zero():
        models = {m["name"]: m for m in (gateway(e2e, ns, "gw").get("status") or {}).get("models") or []}
        code, text = http(f"{base}/v1/models", timeout=10)
        return (models.get("beta", {}).get("readyWorkers") == 0 and models["beta"]["replicas"] == 0
                and code == 200 and json.loads(text)["models"] == ["alpha"])

    e2e.wait_for("beta at zero: listed by the gateway, forgotten by the router", beta_at_zero, timeout=120, ns=ns)
    assert ready_of(e2e, ns, "gw")["status"] == "True"
    code, text = http(f"{base}/v1/completions", {"model": "beta", "prompt": "hello", "max_tokens": 1}, timeout=30)
    print("model at zero replicas:", code, text[:200])
    assert code == 404 and "beta" in text

    # one alpha replica deleted under load
    victim, victim_ip = sorted(alpha.items())[0]
    results: list[tuple[float, float, int]] = []  # (sent, answered, status)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            sent = time.monotonic()
            try:
                code, _ = http(f"{base}/v1/completions", {"model": "alpha", "prompt": "hello", "max_tokens": 2},
                               timeout=60)
            except OSError:  # a reset or a timeout (on the deleted replica) is a failed request, not the end of the load
                code = -1
            results.append((sent, time.monotonic(), code))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(3)
    deleted_at = time.monotonic()
    e2e.rest.delete(f"/api/v1/namespaces/{ns}/pods/{victim}")

    def dropped():
        _, text = http(f"{base}/workers", timeout=10)
        return victim_ip not in text

    e2e.wait_for("router drops the deleted replica", dropped, timeout=120, ns=ns, every=0.1)
    dropped_at = time.monotonic()
    e2e.wait_for("deleted pod gone", lambda: not any(p["metadata"]["name"] == victim for p in e2e.pods(ns)),
                 timeout=180, ns=ns)
    gone_at = time.monotonic()
    # The load goes on until requests sent after the drop have answered (on a busy machine one
    # completion can outlast any fixed window: CI saw 0 of them after 8 s).
    e2e.wait_for("3 requests sent after the drop answered",
                 lambda: len([r for r in results if r[0] >= dropped_at]) >= 3, timeout=300, ns=ns, every=0.5)
    stop.set()
    thread.join(timeout=90)
    failed = [(round(s - deleted_at, 2), c) for s, _, c in results if c != 200]
    after_drop = [r for r in results if r[0] >= dropped_at]
    print(json.dumps({"discovery_interval_s": round(dropped_at - deleted_at, 2),
                      "pod_gone_after_s": round(gone_at - deleted_at, 2), "requests": len(results),
                      "failed_requests_sent_at_s_after_delete": failed,
                      "requests_after_drop": len(after_drop)}))
    assert len(after_drop) >= 3
    assert all(c == 200 for s, _, c in results if s >= dropped_at), failed


def test_selector_matching_nothing_is_reported(e2e_cluster, e2e_operator, e2e_namespace):
    e2e, ns = e2e_cluster, e2e_namespace
    create(e2e, ns, gateway_body("lonely", selector={"matchLabels": {"team": "nobody"}}), "vllmgateways")
    ready = e2e.wait_for("NoMatchingDeployments", lambda: (c := ready_of(e2e, ns, "lonely")).get("reason") and c,
                         timeout=60, ns=ns)
    assert (ready["status"], ready["reason"]) == ("False", "NoMatchingDeployments")
    assert "team=nobody" in ready["message"]
    # the operator rendered the router's account and workload anyway: it serves as soon as one matches
    kinds = {("ServiceAccount", "serviceaccounts", ""), ("Role", "roles", "/apis/rbac.authorization.k8s.io/v1"),
             ("Deployment", "deployments", "/apis/apps/v1")}
    for _kind, plural, prefix in kinds:
        base = prefix or "/api/v1"
        assert e2e.rest.get_or_none(f"{base}/namespaces/{ns}/{plural}/lonely-router") is not None
    role = e2e.rest.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/lonely-router")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def test_unknown_policy_is_refused_by_the_crd(e2e_cluster, e2e_namespace):
    body = json.dumps({**gateway_body("bad", policy="fastest"), "metadata": {"name": "bad", "namespace": e2e_namespace}})
    out = e2e_cluster.cluster.kubectl("apply", "-f", "-", input=body, check=False)
    assert out.returncode != 0
    assert 'spec.policy: Unsupported value: "fastest"' in out.stderr, out.stderr


def test_missing_api_key_secret_has_a_clear_reason(e2e_cluster, e2e_operator, e2e_namespace):
    e2e, ns = e2e_cluster, e2e_namespace
    create(e2e, ns, gateway_body("keyed", selector={"matchLabels": {"gateway": "demo"}},
                                 auth={"apiKeySecretRef": {"name": "gw-key"}}), "vllmgateways")
    ready = e2e.wait_for("ApiKeySecretMissing", lambda: ready_of(e2e, ns, "keyed").get("reason") == "ApiKeySecretMissing"
                         and ready_of(e2e, ns, "keyed"), timeout=60, ns=ns)
    assert ready["status"] == "False" and "Secret gw-key" in ready["message"]
    assert gateway(e2e, ns, "keyed")["status"]["phase"] == "Failed"
    # the Secret created: the reason goes (the router's pod can now start)
    e2e.rest.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                          "metadata": {"name": "gw-key"}, "stringData": {"api-key": "k"}})
    e2e.wait_for("reason cleared", lambda: ready_of(e2e, ns, "keyed").get("reason") not in (None, "ApiKeySecretMissing"),
                 timeout=90, ns=ns)
