"""Security policies end to end on the real cluster (issue 10).

- trustRemoteCode is false unless set, and an operator started with
  SCIBOX_FORBID_TRUST_REMOTE_CODE=true (the Helm value) refuses objects that set it:
  Ready=False reason TrustRemoteCodeForbidden and no child at all.
- The API key from auth.apiKeySecretRef reaches the server only as a secretKeyRef: its value is
  in no child, no status, no Event and no operator log line.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest

from scibox_operator.readiness.ownership import owned_by
from tests.faults.convergence import CHILD_KINDS, MANAGED, apply_all, vllmd, wait_converged
from tests.fixtures.operator import OperatorProcess
from tests.operator.kubehelp import condition, get, owner_chain_lookup, wait_for

pytestmark = pytest.mark.cluster


def server_args(cluster, namespace: str, name: str) -> list[str]:
    dep = wait_for(lambda: get(cluster, "deployment", name, namespace), timeout=90, what=f"Deployment {name}")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_trust_remote_code_is_off_unless_set_and_on_only_when_asked(cluster, operator, namespace):
    apply_all(cluster, namespace, [vllmd("plain"), vllmd("remote", model={"name": "scibox/tiny-llama",
                                                                           "trustRemoteCode": True})])
    stored = get(cluster, "vllmd", "plain", namespace)
    assert stored["spec"]["model"]["trustRemoteCode"] is False, "the API server defaults it to false"
    assert not [a for a in server_args(cluster, namespace, "plain") if "trust" in a.lower()]
    assert [a for a in server_args(cluster, namespace, "remote") if "trust" in a.lower()] == ["--trust-remote-code"]


@pytest.mark.slow
def test_an_operator_that_forbids_remote_code_refuses_it_and_serves_the_rest(cluster, operator, namespace,
                                                                          hub_endpoint, tmp_path):
    operator.stop()  # the session's operator allows remote code: it must not act meanwhile
    strict = OperatorProcess(Path(cluster.kubeconfig), tmp_path / "strict", hub_endpoint=hub_endpoint,
                             extra_env={"SCIBOX_FORBID_TRUST_REMOTE_CODE": "true"})
    try:
        strict.start()
        apply_all(cluster, namespace, [vllmd("allowed"), vllmd("refused", model={"name": "scibox/tiny-llama",
                                                                                  "trustRemoteCode": True})])
        refused = wait_for(lambda: (lambda o: o if condition(o, "Ready") else None)(
            get(cluster, "vllmd", "refused", namespace)), timeout=60, what="a verdict on the refused one")
        ready = condition(refused, "Ready")
        assert (ready["status"], ready["reason"], refused["status"]["phase"]) == \
            ("False", "TrustRemoteCodeForbidden", "Failed")
        assert "trustRemoteCode" in ready["message"]
        wait_for(lambda: get(cluster, "deployment", "allowed", namespace), timeout=90, what="the allowed one deployed")
        kids = json.loads(cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", MANAGED, "-o", "json").stdout)
        refused_kids = [k["metadata"]["name"] for k in kids["items"]
                        if "refused" in [r["name"] for r in k["metadata"].get("ownerReferences") or []]
                        or k["metadata"]["name"].startswith("refused")]
        assert refused_kids == [], f"children of a refused object: {refused_kids}"

        # Turning it off is enough to be served.
        apply_all(cluster, namespace, [vllmd("refused", model={"name": "scibox/tiny-llama", "trustRemoteCode": False})])
        args = server_args(cluster, namespace, "refused")
        assert not [a for a in args if "trust" in a.lower()]
        assert strict.proc.poll() is None
    finally:
        strict.stop()
        operator.start()


def test_the_api_key_value_appears_nowhere_but_in_its_secret(cluster, operator, namespace):
    key_value = f"sk-scibox-{uuid.uuid4().hex}"
    log_offset = operator.log_path.stat().st_size
    cluster.kubectl("create", "secret", "generic", "model-key", "-n", namespace, f"--from-literal=api-key={key_value}")
    apply_all(cluster, namespace, [vllmd("keyed", auth={"apiKeySecretRef": {"name": "model-key"}})])
    snap, _ = wait_converged(cluster, namespace, timeout=120)

    container = next(c for c in snap.children if c["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    # The pods that get the key chain up to the VLLMDeployment through the real ReplicaSet (issue 18).
    lookup = owner_chain_lookup(cluster, namespace)
    keyed_uid = get(cluster, "vllmd", "keyed", namespace)["metadata"]["uid"]
    server_pods = wait_for(lambda: [p for p in get(cluster, "pods", None, namespace)["items"]
                                    if p["metadata"]["labels"].get("app.kubernetes.io/component") == "server"],
                           timeout=60, what="server pods")
    assert server_pods and all(owned_by(p, keyed_uid, lookup) for p in server_pods)
    assert {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "model-key", "key": "api-key"}}} \
        in container["env"]
    encoded = base64.b64encode(key_value.encode()).decode()
    places = {
        "children": json.dumps(snap.children),
        "VLLMDeployment": json.dumps(snap.vllmds),
        "events": cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "pods": cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout,
    }
    with open(operator.log_path, errors="replace") as log:
        log.seek(log_offset)
        places["operator log"] = log.read()
    for where, text in places.items():
        assert key_value not in text and encoded not in text, f"the API key leaked into the {where}"


class _TokenRecorder:
    """An HTTP server on loopback that records the Authorization header of every request."""

    def __init__(self) -> None:
        import http.server
        import threading

        recorded = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                recorded.append((self.path, self.headers.get("Authorization")))
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_endpoint_the_admin_did_not_allow_gets_no_request_and_no_token(cluster, operator, namespace):
    """issue 18: a tenant names their own server as cache.endpoint with a token Secret, with
    explicit sizes (no metadata read needed) and auto sizes: it receives nothing, no download Job
    is made, and the status says why."""
    recorder = _TokenRecorder()
    try:
        token = f"hf_{uuid.uuid4().hex}"
        cluster.kubectl("create", "secret", "generic", "hf", "-n", namespace, f"--from-literal=token={token}")
        cache = {"size": "1Gi", "endpoint": recorder.endpoint, "tokenSecretRef": {"name": "hf"}}
        apply_all(cluster, namespace, [
            vllmd("explicit", cache=cache),
            vllmd("auto", cache=cache, resources={"gpus": "auto"}),
        ])
        for name in ("explicit", "auto"):
            refused = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") else None)(
                get(cluster, "vllmd", name, namespace)), timeout=60, what=f"a verdict on {name}")
            ready = condition(refused, "Ready")
            assert (ready["status"], ready["reason"], refused["status"]["phase"]) == \
                ("False", "EndpointNotAllowed", "Failed"), ready
            assert recorder.endpoint in ready["message"] and "no token is sent" in ready["message"]
        kids = json.loads(cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", MANAGED, "-o", "json").stdout)
        assert kids["items"] == [], f"children of refused objects: {[k['metadata']['name'] for k in kids['items']]}"
        assert recorder.requests == [], f"the endpoint was asked: {recorder.requests}"
    finally:
        recorder.close()


def test_code_loading_env_and_images_are_refused_by_a_strict_operator(cluster, operator, namespace, hub_endpoint,
                                                                      tmp_path):
    """forbidTrustRemoteCode also refuses env that loads code; an image allowlist refuses other
    images; nothing is rendered for either."""
    operator.stop()
    strict = OperatorProcess(Path(cluster.kubeconfig), tmp_path / "strict", hub_endpoint=hub_endpoint,
                             extra_env={"SCIBOX_FORBID_TRUST_REMOTE_CODE": "true",
                                        "SCIBOX_VLLM_IMAGE": "ghcr.io/scibox/vllm:0.32.0",
                                        "SCIBOX_ALLOWED_IMAGE_PREFIXES": "ghcr.io/scibox/"})
    cases = {"pythonpath": ("CodeLoadingEnvForbidden", {"engine": {"env": [{"name": "PYTHONPATH", "value": "/m"}]}}),
             "ld-preload": ("CodeLoadingEnvForbidden", {"engine": {"env": [{"name": "LD_PRELOAD", "value": "/m.so"}]}}),
             "image": ("ImageNotAllowed", {"image": "docker.io/evil/vllm:1"}),
             "download-image": ("ImageNotAllowed", {"cache": {"size": "1Gi", "downloadImage": "evil/dl:1"}})}
    try:
        strict.start()
        apply_all(cluster, namespace, [vllmd(name, **spec) for name, (_, spec) in cases.items()])
        for name, (reason, _) in cases.items():
            obj = wait_for(lambda: (lambda o: o if (condition(o, "Ready") or {}).get("reason") else None)(
                get(cluster, "vllmd", name, namespace)), timeout=60, what=f"a verdict on {name}")
            assert (condition(obj, "Ready")["reason"], obj["status"]["phase"]) == (reason, "Failed"), obj["status"]
        kids = json.loads(cluster.kubectl("get", CHILD_KINDS, "-n", namespace, "-l", MANAGED, "-o", "json").stdout)
        assert kids["items"] == [], [k["metadata"]["name"] for k in kids["items"]]
        assert strict.proc.poll() is None
    finally:
        strict.stop()
        operator.start()


class _KeyRecorder:
    """An HTTP server on one loopback address that records each request's path and bearer token
    (a stand-in for whatever listens on a pod's address)."""

    def __init__(self, host: str, port: int = 8000) -> None:
        import http.server
        import threading

        recorded = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                recorded.append((self.path, self.headers.get("Authorization")))
                self.send_response(503)
                self.end_headers()

            do_GET = do_POST = _record  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _tenant_pod(name: str, node: str, labels: dict, *, host_network: bool) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "hostNetwork": host_network,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "c", "image": "tenant/any:1", "ports": [{"containerPort": 8000}]}]}}


def test_pods_a_tenant_labelled_like_server_pods_are_never_probed_nor_sent_the_key(cluster, operator, namespace):
    """issue 18: the prober probes (and sends the API key to) only pods of the VLLMDeployment's
    own ReplicaSet, never a hostNetwork pod or a bare pod that merely carries the labels."""
    key_value = f"key-{uuid.uuid4().hex}"
    cluster.kubectl("create", "secret", "generic", "victim-key", "-n", namespace, f"--from-literal=api-key={key_value}")
    apply_all(cluster, namespace, [vllmd("victim", auth={"apiKeySecretRef": {"name": "victim-key"}})])
    ours = wait_for(lambda: next((p for p in get(cluster, "pods", None, namespace)["items"]
                                  if p["metadata"]["labels"].get("app.kubernetes.io/instance") == "victim"
                                  and p["status"].get("podIP")), None), timeout=120, what="the victim's server pod")
    labels = {k: v for k, v in ours["metadata"]["labels"].items() if k != "pod-template-hash"}
    node = ours["spec"]["nodeName"]
    for name, host_network in (("tenant-bare", False), ("tenant-hostnet", True)):
        cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        input=json.dumps(_tenant_pod(name, node, labels, host_network=host_network)))
    tenant = {name: wait_for(lambda: (get(cluster, "pod", name, namespace).get("status") or {}).get("podIP"),
                             timeout=60, what=f"{name}'s address") for name in ("tenant-bare", "tenant-hostnet")}
    assert tenant["tenant-hostnet"] == get(cluster, "pod", "tenant-hostnet", namespace)["status"]["hostIP"]
    recorders = {name: _KeyRecorder(ip) for name, ip in tenant.items()}
    recorders["ours"] = _KeyRecorder(ours["status"]["podIP"])  # the control: this one must be probed
    try:
        wait_for(lambda: recorders["ours"].requests, timeout=60, what="the prober reaching the victim's own pod")
        time.sleep(6)  # three more probe rounds (SCIBOX_PROBE_PERIOD=2)
        for name in tenant:
            assert recorders[name].requests == [], f"{name} was probed: {recorders[name].requests}"
    finally:
        for recorder in recorders.values():
            recorder.close()
