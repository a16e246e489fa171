"""Autoscaling under real load (issue 22): real vLLM CPU servers on the real-runner node, a real
Prometheus discovering and scraping them through the API server, KEDA's operator and metrics
adapter (built from the Go module proxy) behind the aggregation layer, and the
kube-controller-manager's own HPA controller acting on KEDA's HPA.

One VLLMDeployment of the tiny model, one module, one timeline:
  load (bounded: N concurrent completions until the second replica serves) -> 1 -> 2 replicas,
  the second answers, the operator reports 2/2 -> load stops -> back to 1 after the (shortened)
  stabilization window -> scaleToZero on -> idle -> 0, phase ScaledToZero -> `kubectl scale`
  wakes it -> Ready=True and a completion answers; no byte of the model downloaded again.
The timeline is printed as JSON (tests/bench/autoscaling.py prints the same numbers).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.cluster import RWX_STORAGE_CLASS, apply_rwx_storage_class
from tests.fixtures.keda import Keda
from tests.fixtures.operator import OperatorProcess
from tests.fixtures.prometheus import PrometheusServer
from tests.loopback import NO_PROXY

from .conftest import vllmd_body

pytestmark = [pytest.mark.cluster, pytest.mark.vllm, pytest.mark.prometheus, pytest.mark.slow, pytest.mark.keda]

NAME = "elastic"
SERVER = "app.kubernetes.io/component=server"
SCRAPE_SECONDS = 2


def prometheus_config(targets_file: Path, operator: OperatorProcess) -> dict:
    """Server pods as file_sd targets (Debian's Prometheus has no kubernetes_sd: PodDiscovery
    writes the file from the API server's pod list), labelled the way Prometheus-Operator labels
    a ServiceMonitor's series (namespace, service, pod)."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {"job_name": "vllm", "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}]},
            {"job_name": "scibox-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]},
        ],
    }


class PodDiscovery:
    """Every second: the running server pods of the cluster -> Prometheus file_sd targets."""

    def __init__(self, rest, path: Path):
        self.rest, self.path = rest, path
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.path.write_text("[]")

    def _run(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                pods = self.rest.get(f"/api/v1/pods?labelSelector={SERVER}")["items"]
            except Exception:  # noqa: BLE001 - a busy API server: try again next second
                continue
            groups = [{"targets": [f"{p['status']['podIP']}:8000"],
                       "labels": {"namespace": p["metadata"]["namespace"], "pod": p["metadata"]["name"],
                                  "service": p["metadata"]["labels"].get("app.kubernetes.io/instance", "")}}
                      for p in pods if (p.get("status") or {}).get("podIP") and p["status"].get("phase") == "Running"]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.path)

    def start(self) -> PodDiscovery:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def complete(ip: str, model: str, tokens: int = 48, timeout: float = 600) -> str:
    req = urllib.request.Request(f"http://{ip}:8000/v1/completions", method="POST",
                                 headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": model, "prompt": "hello " * 8, "max_tokens": tokens,
                                                  "ignore_eos": True}).encode())
    with NO_PROXY.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())["choices"][0]["text"]


class Load:
    """N concurrent completion loops against one pod until stopped (and never longer than
    `limit` seconds), each pausing `pause` seconds between requests: bounded load on loopback.
    Paced, because a vLLM CPU worker spins (sched_yield) for 1 s after each step: unpaced (the
    tiny model answers ~30 completions/s) the first server held a core at ~90% and the second
    replica's cold start on the same core got ~1.5%."""

    def __init__(self, ip: str, model: str, workers: int = 1, limit: float = 900, tokens: int = 16,
                 pause: float = 2.0):
        self.ip, self.model, self.limit, self.tokens, self.pause = ip, model, limit, tokens, pause
        self.stop_event = threading.Event()
        self.done = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop_event.is_set() and time.monotonic() - started < self.limit:
            try:
                complete(self.ip, self.model, tokens=self.tokens)
                self.done += 1
            except OSError:
                pass
            self.stop_event.wait(self.pause)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=150)


AUTOSCALING_ENV = ("SCIBOX_AUTOSCALING_POLLING_SECONDS", "SCIBOX_AUTOSCALING_PROMETHEUS_URL",
                   "SCIBOX_AUTOSCALING_ALLOW_QUERY")


@pytest.fixture(scope="module")
def stack(e2e_cluster, e2e_operator, tmp_path_factory):
    """KEDA, Prometheus, and the session's operator restarted with KEDA's triggers pointed at
    that Prometheus (one operator per cluster: a second one would fight it over every object);
    it gets its settings back afterwards."""
    cluster = e2e_cluster.cluster
    work = tmp_path_factory.mktemp("autoscaling")
    keda = Keda(cluster, work / "keda")
    try:
        keda.start()
    except BaseException:
        keda.stop()
        raise
    operator: OperatorProcess = e2e_operator
    operator.stop()
    operator.extra_env["SCIBOX_AUTOSCALING_POLLING_SECONDS"] = str(SCRAPE_SECONDS)
    # The test scales on its own PromQL (target.query): an admin's opt-in, off by default.
    operator.extra_env["SCIBOX_AUTOSCALING_ALLOW_QUERY"] = "true"
    (work / "prometheus").mkdir()
    discovery = PodDiscovery(cluster.rest, work / "prometheus" / "targets.json").start()
    prom = PrometheusServer(prometheus_config(work / "prometheus" / "targets.json", operator), work / "prometheus")
    operator.extra_env["SCIBOX_AUTOSCALING_PROMETHEUS_URL"] = prom.url
    try:
        prom.start()
        operator.start()
    except BaseException:
        prom.stop()
        discovery.stop()
        keda.stop()
        _restore(operator)
        raise
    apply_rwx_storage_class(cluster)
    try:
        yield {"keda": keda, "operator": operator, "prometheus": prom}
    finally:
        prom.stop()
        discovery.stop()
        keda.stop()
        # nothing of this module's stays for the session's other tests (the cluster may be theirs)
        keda.uninstall()
        cluster.kubectl("delete", "storageclass", RWX_STORAGE_CLASS, "--ignore-not-found")
        _restore(operator)


def _restore(operator: OperatorProcess) -> None:
    operator.stop()
    for key in AUTOSCALING_ENV:
        operator.extra_env.pop(key, None)
    operator.start()


def serving_pods(e2e, ns: str) -> list[dict]:
    return [p for p in e2e.pods(ns, SERVER) if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or [])]


@pytest.mark.timeout(2400)  # three vLLM cold starts: several minutes each on 2 busy cores
def test_load_scales_1_to_2_and_back_then_idle_to_zero_and_a_wake(e2e_cluster, e2e_namespace, stack):
    e2e, ns = e2e_cluster, e2e_namespace
    body = vllmd_body(NAME, "scibox/tiny-llama", None)
    body["spec"]["cache"].update(storageClassName=RWX_STORAGE_CLASS, accessMode="ReadWriteMany")
    body["spec"]["engine"] = {
        "maxNumSeqs": 1,  # concurrent requests queue: vllm:num_requests_waiting
        # vLLM CPU's automatic binding pins every server's worker to core 0 of this 2-core box
        # (core 1 "reserved"), so the loaded first replica and the second's cold start shared
        # one core: unbound, one thread each, the kernel spreads them over both.
        "env": [{"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"}, {"name": "OMP_NUM_THREADS", "value": "1"}],
    }
    body["spec"].pop("replicas", None)
    # The tiny model answers in milliseconds: its queue is empty at most scrape instants (seen:
    # 0 waiting at 10 completions/s, 5 at most over 10 minutes), so the test scales on the
    # expert target, a PromQL rate of finished requests, which a bounded load holds steady.
    # One replica carries 0.1 requests/s: one paced load worker (~0.45 requests/s) asks for 2
    # (the most), an idle model for 1; the operator's one probe completion per new pod (1/20 s
    # over the window) stays below it.
    rate = f'sum(rate(vllm:request_success_total{{namespace="{ns}",service="{NAME}"}}[20s]))'
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 2,
                                   "target": {"query": rate, "queryValue": 0.1},
                                   "behavior": {"scaleUpStabilizationSeconds": 0,
                                                # shortened from the default 300 s: the load
                                                # holds the rate far above the target, a lull
                                                # of a minute would be a stalled server
                                                "scaleDownStabilizationSeconds": 60}}
    e2e.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    t: dict[str, float] = {}
    t0 = time.monotonic()

    def ready(n: int):
        vd = e2e.vllmd(ns, NAME) or {}
        st = vd.get("status") or {}
        return vd if st.get("readyReplicas") == n and vd["spec"].get("replicas") == n and st.get("phase") == "Ready" \
            else None

    e2e.wait_for("1/1 Ready", lambda: ready(1), timeout=900, ns=ns)
    t["first_ready_s"] = time.monotonic() - t0
    so = e2e.rest.get(f"/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{NAME}")
    assert so["spec"]["minReplicaCount"] == 1
    first = e2e.wait_for("a Ready pod", lambda: serving_pods(e2e, ns), timeout=120, ns=ns)[0]
    ip = first["status"]["podIP"]
    downloads_before = {p["metadata"]["name"] for p in e2e.pods(ns, "app.kubernetes.io/component=model-download")}
    assert downloads_before  # the model was downloaded once, for the first replica

    with Load(ip, NAME) as load:
        start = time.monotonic()
        e2e.wait_for("KEDA's HPA asks for 2", lambda: (e2e.vllmd(ns, NAME) or {}).get("spec", {}).get("replicas") == 2,
                     timeout=300, ns=ns)
        t["load_to_scale_decision_s"] = time.monotonic() - start
        e2e.wait_for("2/2 Ready", lambda: ready(2), timeout=900, ns=ns)
        t["load_to_second_replica_ready_s"] = time.monotonic() - start
        second = e2e.wait_for("the second pod Ready", lambda: [p for p in serving_pods(e2e, ns)
                                                                if p["metadata"]["name"] != first["metadata"]["name"]],
                              timeout=120, ns=ns)[0]
        assert complete(second["status"]["podIP"], NAME, tokens=4)  # the second replica serves
        t["load_to_second_replica_serving_s"] = time.monotonic() - start
    stopped = time.monotonic()
    assert load.done > 0
    hpa = e2e.rest.get(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/keda-hpa-{NAME}")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "VLLMDeployment"
    e2e.wait_for("back to 1 after the stabilization window", lambda: ready(1), timeout=600, ns=ns)
    t["load_stop_to_1_replica_s"] = time.monotonic() - stopped

    # Scale to zero: on, then idle.
    body["spec"]["autoscaling"]["scaleToZero"] = {"idleSeconds": 30}
    e2e.cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    idle = time.monotonic()

    def zero():
        vd = e2e.vllmd(ns, NAME) or {}
        ready_cond = next((c for c in (vd.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        return vd if vd.get("spec", {}).get("replicas") == 0 and vd["status"].get("phase") == "ScaledToZero" \
            and ready_cond.get("reason") == "ScaledToZero" and not e2e.pods(ns, SERVER) else None

    vd = e2e.wait_for("scaled to zero when idle", zero, timeout=600, ns=ns)
    t["scale_to_zero_on_to_zero_s"] = time.monotonic() - idle
    t["last_request_to_zero_s"] = time.monotonic() - stopped  # idle since the load stopped
    assert next(c for c in vd["status"]["conditions"] if c["type"] == "Ready")["status"] == "False"

    # Wake: kubectl scale from 0 (the gateway's counter does the same through the scale subresource).
    wake = time.monotonic()
    e2e.cluster.kubectl("scale", "vllmd", NAME, "-n", ns, "--replicas=1")
    e2e.wait_for("awake: 1/1 Ready", lambda: ready(1), timeout=900, ns=ns)
    pod = e2e.wait_for("a Ready pod", lambda: serving_pods(e2e, ns), timeout=120, ns=ns)[0]
    assert complete(pod["status"]["podIP"], NAME, tokens=4)
    t["wake_to_first_completion_s"] = time.monotonic() - wake
    # the cache stayed: no download pod ran again, and the wake's start-up downloaded nothing
    after = {p["metadata"]["name"] for p in e2e.pods(ns, "app.kubernetes.io/component=model-download")}
    assert after <= downloads_before, f"download pods after the wake: {sorted(after - downloads_before)}"
    startup = (e2e.vllmd(ns, NAME) or {}).get("status", {}).get("startup") or {}
    assert not startup.get("downloadBytes"), startup
    timeline = {k: round(v, 1) for k, v in t.items()}
    timeline["wake_bytes_downloaded"] = int(startup.get("downloadBytes") or 0)
    timeline["wake_startup_stages_s"] = {k: v for k, v in startup.items() if k.endswith("Seconds")}
    timeline["load_requests_done"] = load.done
    print("\nautoscaling timeline " + json.dumps(timeline))
