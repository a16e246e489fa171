"""apply -> download -> serve -> probe -> metrics -> delete, on real processes.

The operator (a real process) reconciles a VLLMDeployment on a local cluster (real apiserver,
scheduler, controllers); the node it lands on is owned by the real runner, so the download Job
runs the real `download_model.sh` against the local hub mirror into the PV's folder, and the
Deployment's pod is the real vLLM CPU server on its pod IP. Nothing is mocked.

Timings (apply -> Ready and its stages) are printed, not asserted.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import API, vllmd_body
from tests.fixtures.hub import TINY_REPO
from tests.loopback import NO_PROXY

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.slow]

API_KEY = "e2e-secret-key"
NEW_API_KEY = "e2e-rotated-key"


def http_json(url: str, payload: dict | None = None, headers: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with NO_PROXY.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_of(e2e, ns: str) -> dict | None:
    jobs = e2e.rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
    return jobs[0] if jobs else None


def job_condition(job: dict | None, type_: str) -> dict | None:
    return next((c for c in ((job or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == type_ and c["status"] == "True"), None)


def test_missing_model_fails_the_download_at_once(e2e_cluster, e2e_operator, e2e_namespace, hub_mirror):
    e2e, ns = e2e_cluster, e2e_namespace
    body = vllmd_body("ghost", "scibox/no-such-model", hub_mirror.endpoint)
    e2e.rest.create(f"{API}/namespaces/{ns}/vllmdeployments", body)

    failed = e2e.wait_for("the download Job to fail", lambda: job_condition(job_of(e2e, ns), "Failed"),
                          timeout=120, ns=ns)
    job = job_of(e2e, ns)
    # download_model.sh exited with not_found (3), a permanent error: the pod failure policy
    # fails the Job on the first attempt instead of retrying with back-off.
    assert failed["reason"] == "PodFailurePolicy", failed
    assert job["status"].get("failed") == 1 and not job["status"].get("succeeded")
    pod = next(p for p in e2e.pods(ns) if p["metadata"]["labels"].get("job-name") == job["metadata"]["name"])
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3, terminated
    assert "not_found" in terminated.get("message", ""), terminated  # from the termination log

    cached = e2e.wait_for("ModelCached=False/DownloadFailed", lambda: (lambda c: c if c and c["reason"] ==
                          "DownloadFailed" else None)(e2e.condition(ns, "ghost", "ModelCached")), timeout=60, ns=ns)
    assert cached["status"] == "False"
    status = e2e.vllmd(ns, "ghost")["status"]
    assert status["phase"] == "Failed", status
    # No server was ever created for a model that is not there.
    assert e2e.rest.get_or_none(f"/apis/apps/v1/namespaces/{ns}/deployments/ghost") is None
    assert not e2e.pod_processes()


def test_apply_download_serve_probe_metrics_delete(e2e_cluster, e2e_operator, e2e_namespace, hub_mirror, tmp_path):
    e2e, ns = e2e_cluster, e2e_namespace
    e2e.rest.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tiny-key"},
        "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()}})
    # Air-gapped: the spec names no endpoint; the operator's own setting (the mirror) reaches the
    # download Job, which fetches nothing from anywhere else.
    body = vllmd_body("tiny", TINY_REPO, None, api_key_secret="tiny-key")
    hub_mirror.clear_log()

    marks: dict[str, float] = {}
    applied = time.monotonic()
    e2e.rest.create(f"{API}/namespaces/{ns}/vllmdeployments", body)

    # 1. The Job downloads the model into the PVC's folder (hostPath PV from the provisioner).
    e2e.wait_for("the download Job to complete", lambda: job_condition(job_of(e2e, ns), "Complete"),
                 timeout=180, ns=ns)
    marks["job_complete"] = time.monotonic() - applied
    job_env = {e["name"]: e.get("value") for e in job_of(e2e, ns)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["HF_ENDPOINT"] == hub_mirror.endpoint, job_env
    assert [r for r in hub_mirror.requests("GET", "model.safetensors") if "/scibox/tiny-llama/" in r.path], \
        "the weights came from the mirror"
    pvc_name = e2e.vllmd(ns, "tiny")["status"]["cacheClaim"]
    pvc = e2e.rest.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{pvc_name}")
    pv = e2e.rest.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    volume = Path(pv["spec"]["hostPath"]["path"])
    model_dir = volume / "scibox--tiny-llama" / "main"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "pytorch_model.bin").exists()  # duplicates are skipped

    # 2. The Deployment's pod runs the real vLLM server on its own loopback pod IP.
    pod = e2e.wait_for("the server pod to run", lambda: next(
        (p for p in e2e.pods(ns, "app.kubernetes.io/component=server")
         if p["status"].get("phase") == "Running"), None), timeout=180, ns=ns)
    marks["server_pod_running"] = time.monotonic() - applied
    pod_ip = pod["status"]["podIP"]
    assert pod_ip.startswith("127.200."), pod_ip
    assert pod["spec"]["nodeName"] == e2e.node

    # 3. The operator's own probe (health, models with the API key, one completion) says Serving.
    ready = e2e.wait_for("Ready=True/Serving", lambda: (lambda c: c if c and c["status"] == "True" else None)(
        e2e.condition(ns, "tiny", "Ready")), timeout=600, ns=ns, every=1.0)
    marks["ready"] = time.monotonic() - applied
    assert ready["reason"] == "Serving", ready
    status = e2e.vllmd(ns, "tiny")["status"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 1, status
    cached = e2e.condition(ns, "tiny", "ModelCached")
    assert cached["status"] == "True" and cached["reason"] == "Downloaded"
    print(f"\napply -> Ready: {marks['ready']:.1f}s (job complete {marks['job_complete']:.1f}s, "
          f"server pod running {marks['server_pod_running']:.1f}s)")
    # status.startup: every stage of this rollout, consistent with each other (issue 21)
    startup = e2e.wait_for("status.startup with its stages", lambda: (
        lambda s: s if "readySeconds" in s and "firstCompletionSeconds" in s else None)(
        e2e.vllmd(ns, "tiny")["status"].get("startup") or {}), timeout=60, ns=ns)
    print(f"status.startup: {json.dumps(startup, sort_keys=True)}")
    assert startup["generation"] == 1 and startup["pod"] == pod["metadata"]["name"], startup
    assert startup["downloadBytes"] > 0 and startup["downloadBytesPerSecond"] > 0, startup
    stages = ("planningSeconds", "downloadSeconds", "podCreationSeconds", "schedulingSeconds",
              "containerStartSeconds", "engineLoadSeconds", "firstCompletionSeconds")
    assert all(startup[s] >= 0 for s in stages), startup
    assert startup["readySeconds"] >= startup["podCreationSeconds"] + startup["engineLoadSeconds"] - 2, startup
    # vLLM wrote its compile cache into the claim's keyed folder (the only writable part of it)
    compile_dirs = list((volume / ".scibox-compile").iterdir())
    assert len(compile_dirs) == 1 and compile_dirs[0].name.startswith("vllm0.32.0-"), compile_dirs
    assert any(p.is_file() for p in compile_dirs[0].rglob("*")), "vLLM wrote nothing under VLLM_CACHE_ROOT"
    # and the operator's histogram saw each stage of it once
    counts = {line.split('stage="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
              for line in e2e_operator.metrics().splitlines()
              if line.startswith("scibox_operator_startup_stage_seconds_count{")}
    assert counts.get("ready", 0) >= 1 and counts.get("engineLoad", 0) >= 1, counts
    # The pod's own readiness (the runner runs its startup/readiness probes every 10 s) follows;
    # the operator's probe, every 2 s here, usually sees the server first.
    pod_path = f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}"
    e2e.wait_for("the pod's Ready condition", lambda: any(
        c["type"] == "Ready" and c["status"] == "True" for c in e2e.rest.get(pod_path)["status"]["conditions"]),
        timeout=120, ns=ns)
    e2e.wait_for("the Deployment's readyReplicas", lambda: (e2e.rest.get(
        f"/apis/apps/v1/namespaces/{ns}/deployments/tiny").get("status") or {}).get("readyReplicas") == 1,
        timeout=60, ns=ns)
    print(f"apply -> pod Ready (kubelet probes): {time.monotonic() - applied:.1f}s")

    # Every socket of the server's processes stays on loopback; the API listens on the pod IP.
    listening = set()
    for pid in e2e.pod_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in psutil.Process(pid).net_connections("inet"):
                for addr in filter(None, (conn.laddr, conn.raddr)):
                    assert ipaddress.ip_address(addr.ip).is_loopback, (pid, conn)
                if conn.status == psutil.CONN_LISTEN:
                    listening.add((conn.laddr.ip, conn.laddr.port))
    assert (pod_ip, 8000) in listening, listening

    # 4. A client gets a completion; without the key it is refused.
    base = f"http://{pod_ip}:8000"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    completion = http_json(f"{base}/v1/completions", {"model": "tiny", "prompt": "hello world",
                                                      "max_tokens": 8, "temperature": 0}, headers)
    assert completion["choices"][0]["text"] and completion["usage"]["completion_tokens"] >= 1, completion
    with pytest.raises(urllib.error.HTTPError) as refused:
        http_json(f"{base}/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 1})
    assert refused.value.code == 401

    # 5. A real Prometheus scrapes the pod and sees vLLM's series, the completion counted.
    prometheus = shutil.which("prometheus")
    if prometheus:
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "vllm", "static_configs": [{"targets": [f"{pod_ip}:8000"]}]}],
        }))
        prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
        try:
            def query(q: str) -> list:
                try:
                    return http_json(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.request.quote(q)}",
                                     timeout=5)["data"]["result"]
                except OSError:
                    return []
            series = e2e.wait_for("vllm: series in Prometheus", lambda: query('{__name__=~"vllm:.+"}'),
                                  timeout=60, ns=ns)
            names = {s["metric"]["__name__"] for s in series}
            assert {"vllm:num_requests_running", "vllm:generation_tokens_total"} <= names, sorted(names)
            tokens = query("sum(vllm:generation_tokens_total)")
            assert tokens and float(tokens[0]["value"][1]) >= 8, tokens
        finally:
            prom.terminate()
            prom.wait(timeout=30)
    else:
        print("prometheus not installed: metrics step skipped")

    # 6. The key is rotated: the pods roll (they read it from their environment at start), the
    #    operator's probe reports Serving with the new key, the old key is refused (issue 18).
    rotated = time.monotonic()
    e2e.rest.request("PATCH", f"/api/v1/namespaces/{ns}/secrets/tiny-key",
                     {"data": {"api-key": base64.b64encode(NEW_API_KEY.encode()).decode()}},
                     "application/merge-patch+json")
    old_uid = pod["metadata"]["uid"]
    pod = e2e.wait_for("a new server pod after the key rotation", lambda: next(
        (p for p in e2e.pods(ns, "app.kubernetes.io/component=server")
         if p["status"].get("phase") == "Running" and p["metadata"]["uid"] != old_uid
         and not p["metadata"].get("deletionTimestamp")), None), timeout=180, ns=ns)
    template = e2e.rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments/tiny")["spec"]["template"]
    assert NEW_API_KEY not in json.dumps(template) and API_KEY not in json.dumps(template)
    e2e.wait_for("Ready=True/Serving with the new key", lambda: (
        lambda c: c if c and c["status"] == "True" and c["reason"] == "Serving" else None)(
        e2e.condition(ns, "tiny", "Ready")), timeout=600, ns=ns, every=1.0)
    print(f"key rotation -> Serving with the new key: {time.monotonic() - rotated:.1f}s")
    # the new pod started from the warm compile cache of the first (same key: the digest of the
    # key is an annotation, not an argument)
    print(f"status.startup after the rotation: {json.dumps(e2e.vllmd(ns, 'tiny')['status'].get('startup'))}")
    pod_ip = pod["status"]["podIP"]
    base = f"http://{pod_ip}:8000"
    answer = http_json(f"{base}/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 2},
                       {"Authorization": f"Bearer {NEW_API_KEY}"})
    assert answer["choices"][0]["text"], answer
    with pytest.raises(urllib.error.HTTPError) as stale:
        http_json(f"{base}/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 1}, headers)
    assert stale.value.code == 401, "the old key still opens the server"

    # 7. Delete: the operator's children go (garbage collector), the runner stops the processes.
    assert e2e.pod_processes(), "the server's processes should be running before the delete"
    deleted = time.monotonic()
    e2e.rest.delete(f"{API}/namespaces/{ns}/vllmdeployments/tiny")
    e2e.wait_for("every pod to be gone", lambda: not e2e.pods(ns), timeout=180, ns=ns)
    e2e.wait_for("no process left", lambda: not e2e.pod_processes(), timeout=60, ns=ns)
    assert not port_open(pod_ip, 8000)
    # The pod's memory volume (/dev/shm) and its short TMPDIR alias went with it.
    uid = pod["metadata"]["uid"]
    # (the runner removes them just after the processes stop, so give it a moment)
    e2e.wait_for("the pod's /dev/shm and TMPDIR folders removed",
                 lambda: not (Path("/dev/shm") / f"scibox-runner-{uid}").exists()
                 and not list(Path("/tmp/scibox-runner").glob(f"{uid[:13]}-*")), timeout=15, ns=ns)
    for kind in ("apps/v1/namespaces/{ns}/deployments", "batch/v1/namespaces/{ns}/jobs"):
        path = "/apis/" + kind.format(ns=ns)
        e2e.wait_for(f"{path} to be empty", lambda: not e2e.rest.get(path)["items"], timeout=60, ns=ns)
    # deletionPolicy Delete: the claim goes too, and with it the provisioner's folder.
    e2e.wait_for("the model cache folder to be removed", lambda: not volume.exists(), timeout=120, ns=ns)
    print(f"delete -> nothing left: {time.monotonic() - deleted:.1f}s")
