"""LoRA adapters on the real vLLM CPU server (issue 24), on real processes.

One VLLMDeployment of the tiny Llama on the real-runner node (one vLLM start for the whole
module): adapters made at test time with peft (tests/fixtures/tiny_lora.py) are served by the
local hub mirror; their download Jobs run the real downloader into the cache claim; the operator
loads and unloads them through vLLM's runtime endpoints. Nothing is mocked.

1. apply with one adapter -> /v1/models lists the base and the adapter, a completion with the
   adapter answers;
2. add a second -> loaded on the running pod, no restart (same pod uid, same container start);
3. remove the first -> unloaded from the server, a request for it gets a 404;
4. broken adapters (files missing, rank over the limit, another base's shapes: refused by the
   download Job; a bias vLLM refuses at load) -> each reported Failed with its reason, the base
   and the good adapter keep serving;
5. the server process dies and is restarted -> Ready again only with its adapter loaded again
   (the one extra vLLM start of the module).

Timings are printed, not asserted.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import API, vllmd_body
from tests.fixtures.hub import TINY_REPO
from tests.fixtures.tiny_lora import make_broken_loras, make_tiny_lora
from tests.loopback import NO_PROXY
from tools.localcluster.runner import kill_marked

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.slow]

GOOD = "scibox/tiny-lora-a"
SECOND = "scibox/tiny-lora-b"
BROKEN = {"missing_files": "scibox/lora-missing-files", "rank": "scibox/lora-rank-16",
          "wrong_base": "scibox/lora-wrong-base", "bias": "scibox/lora-bias"}


def http(url: str, payload: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def lora_repos(hub_mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    good = make_tiny_lora(root / "a", seed=1)
    hub_mirror.add_repo(GOOD, good)
    hub_mirror.add_repo(SECOND, make_tiny_lora(root / "b", seed=5))
    for kind, folder in make_broken_loras(root / "broken", good).items():
        hub_mirror.add_repo(BROKEN[kind], folder)
    return hub_mirror


def test_adapters_load_unload_without_restart_and_broken_ones_are_reported(
        e2e_cluster, e2e_operator, e2e_namespace, lora_repos):
    e2e, ns, name = e2e_cluster, e2e_namespace, "lora"
    path = f"{API}/namespaces/{ns}/vllmdeployments/{name}"
    body = vllmd_body(name, TINY_REPO, lora_repos.endpoint)
    body["spec"]["engine"].update(maxLoras=5, maxLoraRank=8)
    body["spec"]["adapters"] = [{"name": "alpha", "source": GOOD}]

    def set_adapters(*adapters: dict) -> None:
        e2e.rest.request("PATCH", path, {"spec": {"adapters": list(adapters)}},
                         content_type="application/merge-patch+json")

    def adapter(entry: str) -> dict | None:
        return next((a for a in (e2e.vllmd(ns, name).get("status") or {}).get("adapters") or []
                     if a["name"] == entry), None)

    def adapter_in(entry: str, state: str):
        got = adapter(entry)
        return got if got and got.get("state") == state else None

    def server_pod() -> dict | None:
        return next((p for p in e2e.pods(ns, "app.kubernetes.io/component=server")
                     if p["status"].get("phase") == "Running"), None)

    def served(base_url: str) -> set[str]:
        status, models = http(f"{base_url}/v1/models", timeout=10)
        return {m["id"] for m in models.get("data", [])} if status == 200 else set()

    applied = time.monotonic()
    e2e.rest.create(f"{API}/namespaces/{ns}/vllmdeployments", body)

    # 1. One adapter: loaded before the replica counts as serving; base and adapter both served.
    ready = e2e.wait_for("Ready=True", lambda: (lambda c: c if c and c["status"] == "True" else None)(
        e2e.condition(ns, name, "Ready")), timeout=600, ns=ns, every=1.0)
    t_ready = time.monotonic() - applied
    assert ready["reason"] == "Serving", ready
    loaded = e2e.wait_for("alpha Loaded", lambda: adapter_in("alpha", "Loaded"), timeout=60, ns=ns)
    pod = server_pod()
    assert loaded["pods"] == [{"pod": pod["metadata"]["name"], "state": "Loaded"}], loaded
    base_url = f"http://{pod['status']['podIP']}:8000"
    assert {name, "alpha"} <= served(base_url)
    status, completion = http(f"{base_url}/v1/completions", {"model": "alpha", "prompt": "hello world",
                                                             "max_tokens": 4, "temperature": 0})
    assert status == 200 and completion["model"] == "alpha" and completion["choices"][0]["text"], completion
    # The pod template carries LoRA's switches, never the adapter list.
    deployment = e2e.rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"--enable-lora", "--max-loras=5", "--max-lora-rank=8"} <= set(container["args"]), container["args"]
    assert '"alpha"' not in json.dumps(deployment["spec"]["template"]) and GOOD not in json.dumps(deployment["spec"])
    jobs = {j["metadata"]["name"]: j for j in e2e.rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]}
    alpha_job = loaded["downloadJob"]
    assert alpha_job in jobs, sorted(jobs)
    print(f"\napply -> Ready with adapter alpha loaded: {t_ready:.1f}s")

    uid = pod["metadata"]["uid"]
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    restarts = pod["status"]["containerStatuses"][0].get("restartCount", 0)
    generation = deployment["metadata"]["generation"]

    def same_pod() -> None:
        now = server_pod()
        assert now is not None and now["metadata"]["uid"] == uid, "the server pod was replaced"
        cs = now["status"]["containerStatuses"][0]
        assert cs["state"]["running"]["startedAt"] == started and cs.get("restartCount", 0) == restarts, cs
        dep = e2e.rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        assert dep["metadata"]["generation"] == generation, "the Deployment's template changed"

    # 2. A second adapter: loaded on the running pod, nothing restarted.
    mark = time.monotonic()
    set_adapters({"name": "alpha", "source": GOOD}, {"name": "beta", "source": SECOND})
    e2e.wait_for("beta Loaded", lambda: adapter_in("beta", "Loaded"), timeout=180, ns=ns)
    print(f"add adapter -> Loaded: {time.monotonic() - mark:.1f}s (download Job + runtime load)")
    assert {name, "alpha", "beta"} <= served(base_url)
    status, completion = http(f"{base_url}/v1/completions", {"model": "beta", "prompt": "hello", "max_tokens": 2})
    assert status == 200 and completion["model"] == "beta", completion
    same_pod()

    # 3. Remove the first: unloaded from the server, its Job removed; asking for it is a 404.
    mark = time.monotonic()
    set_adapters({"name": "beta", "source": SECOND})
    e2e.wait_for("alpha unloaded", lambda: "alpha" not in served(base_url), timeout=60, ns=ns)
    print(f"remove adapter -> unloaded: {time.monotonic() - mark:.1f}s")
    status, error = http(f"{base_url}/v1/completions", {"model": "alpha", "prompt": "hello", "max_tokens": 2})
    assert status == 404 and "alpha" in json.dumps(error), (status, error)
    e2e.wait_for("alpha gone from status", lambda: adapter("alpha") is None, timeout=30, ns=ns)
    e2e.wait_for("alpha's Job deleted", lambda: e2e.rest.get_or_none(
        f"/apis/batch/v1/namespaces/{ns}/jobs/{alpha_job}") is None, timeout=30, ns=ns)
    assert {name, "beta"} <= served(base_url)
    same_pod()

    # 4. Broken adapters: each reported with its reason; the base and beta keep serving.
    set_adapters({"name": "beta", "source": SECOND},
                 *({"name": kind.replace("_", "-"), "source": repo} for kind, repo in BROKEN.items()))
    why = {"missing-files": "lacks adapter_model.safetensors", "rank": "rank 16 is over the server's limit 8",
           "wrong-base": "does not fit the base model"}
    for entry, text in why.items():
        failed = e2e.wait_for(f"{entry} Failed", lambda: adapter_in(entry, "Failed"), timeout=120, ns=ns)
        assert failed["reason"] == "DownloadFailed" and text in failed["message"], failed
    # One the downloader passes and the server itself refuses when the operator loads it.
    refused = e2e.wait_for("bias Failed", lambda: adapter_in("bias", "Failed"), timeout=120, ns=ns)
    assert refused["reason"] == "LoadFailed" and "bias is not supported" in refused["message"], refused
    assert refused["pods"][0]["state"] == "Failed" and refused["pods"][0]["pod"] == pod["metadata"]["name"]
    why["bias"] = "load"
    cond = e2e.condition(ns, name, "AdaptersReady")
    assert cond["status"] == "False" and cond["reason"] == "AdapterFailed" and "4/5" in cond["message"], cond
    ready = e2e.condition(ns, name, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Serving", ready
    assert adapter_in("beta", "Loaded")
    status, completion = http(f"{base_url}/v1/completions", {"model": name, "prompt": "hello", "max_tokens": 2})
    assert status == 200, completion
    assert served(base_url) >= {name, "beta"} and not served(base_url) & set(why)
    same_pod()

    # 5. The server restarts (its processes killed; the node restarts the container): the pod
    # counts as serving again only once its adapter is loaded again.
    set_adapters({"name": "beta", "source": SECOND})
    e2e.wait_for("only beta in status", lambda: [a["name"] for a in
                                                 e2e.vllmd(ns, name)["status"].get("adapters", [])] == ["beta"],
                 timeout=30, ns=ns)
    mark = time.monotonic()
    # Only this pod's processes: found by the marker variables this cluster's runner set.
    killed = kill_marked(Path(e2e.cluster.state_dir).resolve(), e2e.node, pod_uid=uid)
    assert killed, "no process of the server pod found"
    e2e.wait_for("Ready=False after the crash", lambda: (e2e.condition(ns, name, "Ready") or {}).get("status")
                 == "False", timeout=60, ns=ns, every=0.5)
    e2e.wait_for("Ready=True again", lambda: (e2e.condition(ns, name, "Ready") or {}).get("status") == "True",
                 timeout=600, ns=ns, every=0.5)
    assert "beta" in served(base_url), "Ready before the adapter was loaded again"
    print(f"server restart -> Ready with its adapter: {time.monotonic() - mark:.1f}s")
    again = server_pod()
    assert again["metadata"]["uid"] == uid and again["status"]["containerStatuses"][0]["restartCount"] > restarts
    # status.adapters is written by the pass after the probe that loaded it: it follows shortly
    e2e.wait_for("beta Loaded in status again", lambda: adapter_in("beta", "Loaded"), timeout=30, ns=ns)
