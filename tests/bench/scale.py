"""Scale and efficiency benchmark of the operator against the real local cluster; prints JSON.

    python -m tests.bench.scale --quick              # N=100, 30 s steady state (< 2 minutes)
    python -m tests.bench.scale --n 1000 --steady 300

It starts (or reuses) a cluster named "bench" whose two kwok GPU nodes are large enough for every
pod, runs the operator as a real process, creates N VLLMDeployments at once and measures:
time until every child exists and every status is written, per-object create-to-children
latency (p50/p99), API requests by verb/resource (apiserver's own metrics) during convergence
and during the steady state after it, and the operator's peak RSS and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures.operator import OperatorProcess  # noqa: E402
from tests.operator.kubehelp import request_counts  # noqa: E402
from tools.localcluster import Cluster, NodeShape  # noqa: E402

GPU_LABELS = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559",
              "nvidia.com/gpu.count": "8"}
VD_PATH = "/apis/scibox.io/v1alpha1/namespaces/{ns}/vllmdeployments"
MUTATING = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}


MAX_N = 2000


def bench_nodes() -> list[NodeShape]:
    # Room for every server pod and download pod of MAX_N objects on two nodes; fixed, because a
    # cluster left up is reused as it is.
    return [NodeShape(f"gpu-big-{i}", cpu="100000", memory="100Ti", pods=str(2 * MAX_N), gpus=MAX_N,
                      labels=GPU_LABELS) for i in range(2)]


SHARED_CLASS = "bench-rwx"


def vllmd(name: str, source: str) -> dict:
    if source == "pvc":  # the model already on a claim: no download Job, no cache claim per object
        spec = {"model": {"name": "pvc://models/tiny-llama"}, "resources": {"gpus": 1}}
    elif source == "shared":  # one model on ReadWriteMany storage: one claim and one Job for all
        spec = {"model": {"name": "scibox/tiny-llama"}, "resources": {"gpus": 1},
                "cache": {"size": "1Gi", "storageClassName": SHARED_CLASS}}
    else:
        spec = {"model": {"name": "scibox/tiny-llama"}, "resources": {"gpus": 1}, "cache": {"size": "1Gi"}}
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": name}, "spec": spec}


def expected_children(source: str) -> tuple[str, ...]:
    """Kinds every object has one of; the shared mode's single claim and Job are counted apart."""
    if source in ("pvc", "shared"):
        return ("deployments", "services")
    return ("deployments", "services", "jobs", "persistentvolumeclaims")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


class Sampler(threading.Thread):
    """Peak RSS and CPU seconds of one process, sampled twice a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.5)

    def cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system


class Watcher(threading.Thread):
    """First time each VLLMDeployment's status says its Deployment exists, and when it settled."""

    def __init__(self, cluster: Cluster, namespace: str):
        super().__init__(daemon=True)
        self.cluster, self.namespace = cluster, namespace
        self.deployed: dict[str, float] = {}
        self.settled: dict[str, float] = {}
        self.stop_flag = threading.Event()

    def _observe(self, obj: dict) -> None:
        name, status = obj["metadata"]["name"], obj.get("status") or {}
        now = time.monotonic()
        if status.get("phase") in ("Deploying", "Ready", "Degraded") and name not in self.deployed:
            self.deployed[name] = now
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if status.get("replicas") == 1 and ready.get("reason") in ("EngineDown", "Serving") and name not in self.settled:
            self.settled[name] = now

    def run(self) -> None:
        rest = self.cluster.rest
        path = VD_PATH.format(ns=self.namespace)
        rv = None
        while not self.stop_flag.is_set():
            try:
                if rv is None:  # (re)list: a CRD just applied answers 429 while its storage starts
                    listing = rest.get(path)
                    rv = listing["metadata"]["resourceVersion"]
                    for obj in listing["items"]:
                        self._observe(obj)
                for event in rest.watch(path, rv, timeout_seconds=30):
                    rv = event["object"]["metadata"].get("resourceVersion", rv)
                    self._observe(event["object"])
                    if self.stop_flag.is_set():
                        return
            except Exception:  # noqa: BLE001 - re-list and re-watch on any stream error
                rv = None
                time.sleep(0.5)


def count_children(cluster: Cluster, namespace: str, kinds: tuple[str, ...]) -> dict[str, int]:
    selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dscibox-vllm-operator"
    paths = {"deployments": "/apis/apps/v1", "services": "/api/v1", "jobs": "/apis/batch/v1",
             "persistentvolumeclaims": "/api/v1"}
    return {kind: len(cluster.rest.get(f"{paths[kind]}/namespaces/{namespace}/{kind}?{selector}")["items"])
            for kind in kinds}


def operator_summary(text: str) -> dict[str, float]:
    """Reconcile passes and their mean duration, and API requests, from the operator's metrics."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        for prefix, key in (("scibox_operator_reconcile_duration_seconds_sum", "reconcile_seconds_sum"),
                            ("scibox_operator_reconcile_duration_seconds_count", "reconciles"),
                            ("scibox_operator_api_requests_total", "api_requests"),
                            ("scibox_operator_applies_total", "applies")):
            if name.startswith(prefix):
                out[key] = out.get(key, 0.0) + float(value)
    if out.get("reconciles"):
        out["reconcile_mean_seconds"] = round(out["reconcile_seconds_sum"] / out["reconciles"], 4)
    return out


def by_verb_resource(before: dict, after: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for (verb, resource, sub), value in after.items():
        diff = value - before.get((verb, resource, sub), 0.0)
        if diff > 0:
            key = f"{verb} {resource}{'/' + sub if sub else ''}"
            out[key] = out.get(key, 0) + diff
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def mutating(counts: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in counts.items() if k.split()[0] in MUTATING}


def top_frames(collapsed: Path, limit: int = 12) -> list[tuple[str, float]]:
    """Share of samples in which each function is on the stack (py-spy's collapsed format)."""
    total = 0
    inclusive: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    return [(frame, round(100 * c / total, 1)) for frame, c in ranked if "scibox_operator" in frame or "kopf" in frame][:limit]


def run(n: int, steady: float, timeout: float, keep: bool, source: str, profile: Path | None = None) -> dict:
    cluster = Cluster(name="bench")
    cluster.start(nodes=bench_nodes())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io")
    namespace = f"bench-{int(time.time())}"
    cluster.kubectl("create", "namespace", namespace)
    if source == "pvc":
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: models}\n"
            "spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n"))
    if source == "shared":  # the local provisioner's class, marked as able to share a volume
        cluster.kubectl("apply", "-f", "-", input=(
            f"apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {SHARED_CLASS}\n"
            "  annotations: {scibox.io/access-modes: 'ReadWriteOnce,ReadWriteMany'}\n"
            "provisioner: scibox.io/local-path\nreclaimPolicy: Delete\nvolumeBindingMode: Immediate\n"))

    log_dir = Path(tempfile.mkdtemp(prefix="scibox-bench-"))
    operator = OperatorProcess(cluster.kubeconfig, log_dir, hub_endpoint="http://127.0.0.1:9",
                               extra_env={"SCIBOX_PROBE_PERIOD": "10", "SCIBOX_PROBE_TIMEOUT": "2",
                                          "SCIBOX_RESYNC_SECONDS": str(max(60, steady / 2))})
    operator.start()
    sampler = Sampler(operator.proc.pid)
    sampler.start()
    cpu0 = sampler.cpu_seconds()
    watcher = Watcher(cluster, namespace)
    watcher.start()
    time.sleep(1)

    spy = None
    if profile is not None:
        import subprocess
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(operator.proc.pid),
                                "--rate", "50", "--format", "raw", "--output", str(profile), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = request_counts(cluster.metrics_text())
    started = time.monotonic()
    created_at: dict[str, float] = {}
    rest = cluster.rest

    def create(i: int) -> None:
        name = f"m-{i:05d}"
        rest.create(VD_PATH.format(ns=namespace), vllmd(name, source))
        created_at[name] = time.monotonic()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(n)))
    created_s = time.monotonic() - started

    deadline = started + timeout
    children_s = settled_s = None
    while time.monotonic() < deadline:
        if children_s is None and len(watcher.deployed) >= n:
            children_s = max(watcher.deployed.values()) - started
        if len(watcher.settled) >= n:
            settled_s = max(watcher.settled.values()) - started
            break
        time.sleep(0.5)
    converge_end = time.monotonic()
    operator_metrics = operator_summary(operator.metrics())
    if spy is not None:
        import signal
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    after_converge = request_counts(cluster.metrics_text())
    cpu_converge = sampler.cpu_seconds() - cpu0
    children = count_children(cluster, namespace, expected_children(source))
    if source == "shared":
        children.update({f"shared_{kind}": count for kind, count in
                         count_children(cluster, namespace, ("jobs", "persistentvolumeclaims")).items()})

    time.sleep(steady)
    after_steady = request_counts(cluster.metrics_text())
    cpu_steady = sampler.cpu_seconds() - cpu0 - cpu_converge

    latencies = [watcher.deployed[k] - created_at[k] for k in created_at if k in watcher.deployed]
    settle_lat = [watcher.settled[k] - created_at[k] for k in created_at if k in watcher.settled]
    converge_requests = by_verb_resource(before, after_converge)
    steady_requests = by_verb_resource(after_converge, after_steady)
    ours = {"vllmdeployments", "deployments", "services", "jobs", "persistentvolumeclaims", "servicemonitors",
            "networkpolicies", "leaderworkersets"}
    result = {
        "n": n,
        "model_source": source,
        "create_seconds": round(created_s, 2),
        "all_children_seconds": None if children_s is None else round(children_s, 2),
        "all_status_settled_seconds": None if settled_s is None else round(settled_s, 2),
        "converged": settled_s is not None and all(v == (1 if k.startswith("shared_") else n)
                                                    for k, v in children.items()),
        "children": children,
        "create_to_deployment_latency_s": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                                           "count": len(latencies)},
        "create_to_settled_status_latency_s": {"p50": percentile(settle_lat, 0.5),
                                               "p99": percentile(settle_lat, 0.99)},
        "api_requests_convergence": converge_requests,
        "api_mutating_requests_convergence_total": sum(mutating(converge_requests).values()),
        "steady_state_seconds": steady,
        "api_requests_steady": steady_requests,
        "api_mutating_requests_steady": mutating(steady_requests),
        # Only the operator writes these kinds (the cluster's controllers write their status
        # subresources, the endpoints and events; kwok's pods sit on loopback IPs that
        # EndpointSlice validation refuses, so the endpoints controller retries forever).
        "operator_kinds_mutating_requests_steady": {
            k: v for k, v in mutating(steady_requests).items()
            if k.split()[1].split("/")[0] in ours and (k.split()[1] == "vllmdeployments/status"
                                                        or "/" not in k.split()[1])},
        "operator_peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "operator_cpu_seconds_convergence": round(cpu_converge, 2),
        "operator_cpu_seconds_steady": round(cpu_steady, 2),
        "convergence_wall_seconds": round(converge_end - started, 2),
        "operator_metrics_at_convergence": operator_metrics,
        "profile_top_frames_percent": top_frames(profile) if profile is not None and profile.exists() else None,
        "operator_log": str(operator.log_path),
    }
    for k in ("create_to_deployment_latency_s", "create_to_settled_status_latency_s"):
        result[k] = {q: (round(v, 3) if isinstance(v, float) else v) for q, v in result[k].items()}
    watcher.stop_flag.set()
    sampler.stop_flag.set()
    operator.stop()
    if not keep:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steady", type=float, default=300.0, help="seconds of steady state to observe")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="N=100 and 30 s steady state")
    parser.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    parser.add_argument("--down", action="store_true", help="stop the bench cluster at the end")
    parser.add_argument("--profile", type=Path, help="py-spy the operator during convergence into this file")
    parser.add_argument("--model-source", choices=("hub", "pvc", "shared"), default="hub",
                        help="hub: each object gets a cache claim and a download Job (the full path); "
                             "shared: one model on ReadWriteMany storage, one claim and Job for all; "
                             "pvc: pvc:// models on one existing claim (the operator alone)")
    args = parser.parse_args()
    if args.n > MAX_N:
        parser.error(f"--n at most {MAX_N}")
    if args.quick:
        args.n, args.steady, args.timeout = 100, 30.0, 90.0
    result = run(args.n, args.steady, args.timeout, args.keep, args.model_source, args.profile)
    print(json.dumps(result, indent=2))
    if args.down:
        Cluster(name="bench").down()
    return 0 if result["converged"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
