"""Ready comes from the operator probing a real vLLM server at the pod's address (issue 6).

kwok runs the pod on paper and gives it an address in 127.100.0.0/16; the test starts the real
vLLM CPU server on exactly that address and port, so the operator's default pod-IP probe reaches
a real engine.
"""

from __future__ import annotations

import time

import pytest

from tests.fixtures.vllm import VLLMServer

from .kubehelp import apply, condition, get, mutating_delta, request_counts, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.slow]

API_KEY = "sk-scibox-test"


def ready(cluster, ns, name):
    return condition(get(cluster, "vllmd", name, ns) or {}, "Ready") or {}


def test_ready_follows_the_real_server(cluster, operator, namespace, tiny_model_dir, tmp_path):
    cluster.kubectl("create", "secret", "generic", "key", "-n", namespace, f"--from-literal=api-key={API_KEY}")
    apply(cluster, namespace, {
        "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": "tiny"},
        "spec": {"model": {"name": "scibox/tiny-llama", "servedModelName": "tiny"}, "resources": {"gpus": 1},
                 "cache": {"size": "1Gi"}, "auth": {"apiKeySecretRef": {"name": "key"}}},
    })
    pod = wait_for(lambda: next((p for p in get(cluster, "pods", None, namespace)["items"]
                                 if p["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
                                 and p["status"].get("podIP")), None), timeout=120, what="a server pod with an IP")
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("127."), "pod addresses must stay on loopback"
    assert ready(cluster, namespace, "tiny").get("reason") in ("EngineDown", "Pending", "Loading", "WaitingForModelCache")

    server = VLLMServer(tiny_model_dir, host=pod_ip, port=8000, served_model_name="tiny", api_key=API_KEY,
                        log_path=tmp_path / "vllm.log")
    try:
        server.start()
        # kubectl wait works on the condition the operator writes.
        cluster.kubectl("wait", "--for=condition=Ready", "vllmd/tiny", "-n", namespace, "--timeout=60s", timeout=90)
        cond = ready(cluster, namespace, "tiny")
        assert cond["status"] == "True" and cond["reason"] == "Serving", cond
        vd = get(cluster, "vllmd", "tiny", namespace)
        assert vd["status"]["readyReplicas"] == 1 and vd["status"]["phase"] == "Ready"

        # Nothing changes -> nothing is written, for several probe periods (2 s each here).
        before = request_counts(cluster.metrics_text())
        time.sleep(8)
        writes = mutating_delta(before, request_counts(cluster.metrics_text()), {"vllmdeployments", "events"})
        assert writes == {}, writes

        # The engine dies: EngineDown within about one probe period.
        server.kill()
        killed = time.monotonic()
        wait_for(lambda: ready(cluster, namespace, "tiny").get("reason") == "EngineDown", timeout=30,
                 what="EngineDown")
        print(f"EngineDown reported {time.monotonic() - killed:.1f}s after the kill")
        assert get(cluster, "vllmd", "tiny", namespace)["status"]["phase"] == "Deploying"

        # A server that holds another key refuses the operator's probe. (A rotated Secret rolls
        # the pods instead: the e2e test shows that path.)
        stranger = VLLMServer(tiny_model_dir, host=pod_ip, port=8000, served_model_name="tiny", api_key="wrong",
                              log_path=tmp_path / "vllm-wrong-key.log")
        try:
            stranger.start()
            wait_for(lambda: ready(cluster, namespace, "tiny").get("reason") == "Unauthorized", timeout=60,
                     what="Unauthorized")
        finally:
            stranger.stop()

        server.start()
        wait_for(lambda: ready(cluster, namespace, "tiny").get("reason") == "Serving", timeout=60,
                 what="Serving after the restart")
    finally:
        server.stop()
