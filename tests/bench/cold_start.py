"""Cold start benchmark (issue 21): apply -> first token, stage by stage; prints JSON.

    SCIBOX_CLUSTER_NAME=coldstart python -m tests.bench.cold_start [--keep] [--skip-raw]

In one run, on the tiny model and this machine (nothing is asserted: it measures):
1. download: the download Job's own code (images/vllm/download_model.py, concurrent
   snapshot_download, sizes checked, resumable) against a plain `huggingface_hub.snapshot_download`
   of the same repos from the same local mirror (the tiny model and a 4-shard 64 MiB repo);
2. through the operator on the real-runner node: apply -> Ready measured from outside, and the
   operator's own `status.startup` stages (cold: empty compile cache on the model's claim);
3. the same VLLMDeployment restarted by a template edit that keeps its compile key (a new pod,
   the compile cache on the claim warm), apply -> Ready and its stages;
4. raw vLLM: the server started by hand with the arguments and environment the operator rendered
   (read from the live Deployment, the runner's CPU adaptations added) and an empty
   VLLM_CACHE_ROOT: time to /health 200 and to the first completion; then once more with the same
   VLLM_CACHE_ROOT kept (raw warm).
The operator's pod is scaled to zero before step 4, so the two never share the 2 cores; raw vLLM
runs after the operator's cold start, so the OS page cache favours raw (overhead is not flattered).

overhead_s = operator apply->Ready (cold) - raw start->first completion (cold)  (target <= 5 s)
warm_over_cold = warm restart apply->Ready / cold apply->Ready                   (target well < 1)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import API, vllmd_body  # noqa: E402
from tests.fixtures.hub import TINY_REPO  # noqa: E402
from tests.fixtures.hub_mirror import HubMirror  # noqa: E402
from tests.fixtures.operator import CRD, OperatorProcess, free_port  # noqa: E402
from tests.fixtures.tiny_model import make_tiny_model  # noqa: E402
from tests.loopback import NO_PROXY  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from tools.localcluster import Cluster  # noqa: E402
from tools.localcluster.nodes import real_runner_node  # noqa: E402
from tools.localcluster.vllm_cpu import SERVER_ENV  # noqa: E402

NODE = "real-node-0"
SHARDS_REPO = "scibox/bench-shards"
SHARDS, SHARD_BYTES = 4, 16 * 1024 * 1024
PYTHON = sys.executable
RAW_TIMEOUT = 1800.0  # a 2-core machine shared with other vLLM servers took > 600 s


def http(url: str, payload: dict | None = None, timeout: float = 30) -> tuple[int, dict | None]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.strip().startswith(b"{") else None)
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


def wait(what: str, probe, timeout: float, every: float = 0.2):
    return wait_for(what, probe, timeout, every=every)


# --- 1. download ---------------------------------------------------------------------------------

def shards_repo(dest: Path, config: bytes) -> dict[str, bytes]:
    names = [f"model-{i:05d}-of-{SHARDS:05d}.safetensors" for i in range(1, SHARDS + 1)]
    index = {"metadata": {"total_size": SHARDS * SHARD_BYTES}, "weight_map": {f"w{i}": n for i, n in enumerate(names)}}
    files = {"config.json": config, "model.safetensors.index.json": json.dumps(index).encode()}
    files.update({n: os.urandom(SHARD_BYTES) for n in names})
    return files


def job_download(endpoint: str, repo: str, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"MODEL_ID": repo, "CACHE_DIR": str(cache), "HF_ENDPOINT": endpoint,
                "TERMINATION_LOG": str(cache / "termination-log"), "HF_HOME": str(cache / ".hf")})
    started = time.monotonic()
    out = subprocess.run([PYTHON, str(ROOT / "images" / "vllm" / "download_model.py")], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    wall = time.monotonic() - started
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_seconds": round(wall, 3), "reported_seconds": report.get("duration_seconds"),
            "bytes": report.get("downloaded_bytes"), "files": report.get("file_count"),
            "bytes_per_second": report.get("bytes_per_second"), "workers": report.get("workers"),
            "wall_bytes_per_second": int(report.get("downloaded_bytes", 0) / wall) if wall else 0}


def plain_download(endpoint: str, repo: str, dest: Path) -> dict:
    code = ("import json,sys,time; from huggingface_hub import snapshot_download; t=time.monotonic(); "
            "snapshot_download(sys.argv[1], local_dir=sys.argv[2], endpoint=sys.argv[3]); "
            "print(json.dumps({'seconds': time.monotonic()-t}))")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"HF_HOME": str(dest.parent / f".hf-{dest.name}"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    started = time.monotonic()
    out = subprocess.run([PYTHON, "-c", code, repo, str(dest), endpoint], env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    wall = time.monotonic() - started
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)
    inner = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return {"wall_seconds": round(wall, 3), "download_seconds": round(inner, 3), "bytes": size,
            "bytes_per_second": int(size / inner) if inner else 0,
            "wall_bytes_per_second": int(size / wall) if wall else 0}


def compare_downloads(endpoint: str, work: Path) -> dict:
    out = {}
    for repo in (TINY_REPO, SHARDS_REPO):
        out[repo] = {"download_job": job_download(endpoint, repo, work / f"job-{repo.replace('/', '--')}"),
                     "plain_snapshot_download": plain_download(endpoint, repo, work / f"plain-{repo.replace('/', '--')}")}
    return out


# --- 2./3. through the operator ------------------------------------------------------------------

def vd_status(rest, ns: str) -> dict:
    return ((rest.get_or_none(f"{API}/namespaces/{ns}/vllmdeployments/bench") or {}).get("status")) or {}


def ready_for(rest, ns: str, generation: int):
    def probe():
        st = vd_status(rest, ns)
        conditions = {c["type"]: c["status"] for c in st.get("conditions") or []}
        # UpToDate too: during a rollout the old pod still answers
        return st if (st.get("observedGeneration") == generation and conditions.get("Ready") == "True"
                      and conditions.get("UpToDate") == "True" and st.get("phase") == "Ready") else None
    return probe


def startup_block(rest, ns: str, generation: int) -> dict:
    """status.startup once its readySeconds is written (the Ready pass writes it)."""
    return wait("status.startup.readySeconds", lambda: (lambda s: s if s.get("generation") == generation
                and "readySeconds" in s else None)(vd_status(rest, ns).get("startup") or {}), timeout=60)


def through_operator(cluster, ns: str, endpoint: str) -> tuple[dict, dict, dict, dict]:
    rest = cluster.rest
    body = vllmd_body("bench", TINY_REPO, endpoint)
    applied = time.monotonic()
    rest.create(f"{API}/namespaces/{ns}/vllmdeployments", body)
    wait("Ready (cold)", ready_for(rest, ns, 1), timeout=900)
    cold = {"apply_to_ready_seconds": round(time.monotonic() - applied, 3), "startup": startup_block(rest, ns, 1)}

    # A restart by a template edit that keeps the compile key: a variable vLLM does not read.
    deployment = rest.get(f"/apis/apps/v1/namespaces/{ns}/deployments/bench")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = [*body["spec"]["engine"].get("env", []), {"name": "SCIBOX_BENCH_RESTART", "value": "1"}]
    edited = time.monotonic()
    rest.request("PATCH", f"{API}/namespaces/{ns}/vllmdeployments/bench", {"spec": {"engine": {"env": env}}},
                 "application/merge-patch+json")
    wait("Ready (warm restart)", ready_for(rest, ns, 2), timeout=900)
    warm = {"apply_to_ready_seconds": round(time.monotonic() - edited, 3), "startup": startup_block(rest, ns, 2)}

    claim = vd_status(rest, ns)["cacheClaim"]
    pvc = rest.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
    volume = Path(rest.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")["spec"]["hostPath"]["path"])
    folders = sorted((volume / ".scibox-compile").glob("*"))
    compile_cache = {"folders": [f.name for f in folders],
                     "bytes": sum(p.stat().st_size for f in folders for p in f.rglob("*") if p.is_file()),
                     "files": sum(1 for f in folders for p in f.rglob("*") if p.is_file())}
    rest.request("PATCH", f"{API}/namespaces/{ns}/vllmdeployments/bench", {"spec": {"replicas": 0}},
                 "application/merge-patch+json")
    wait("the server pod gone", lambda: not rest.get(
        f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/component=server")["items"], timeout=180)
    return cold, warm, compile_cache, {"args": container["args"], "env": container["env"],
                                       "model_dir": volume}


# --- 4. raw vLLM ---------------------------------------------------------------------------------

def raw_vllm(rendered: dict, model_dir: Path, cache_root: Path, log: Path) -> dict:
    port = free_port()
    args = []
    for arg in rendered["args"]:
        if arg.startswith("--model="):
            arg = f"--model={model_dir}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        args.append(arg)
    home = cache_root.parent / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({e["name"]: e["value"] for e in rendered["env"] if "value" in e})
    env.update(SERVER_ENV)  # the runner's CPU adaptations, as for the operator's pod
    env.update({"HOME": str(home), "HF_HOME": str(home / "hf"), "VLLM_CACHE_ROOT": str(cache_root),
                "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.0/8,localhost"})
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.Popen([PYTHON, "-m", "vllm.entrypoints.openai.api_server", *args], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}, see {log}")
            return http(f"{base}/health", timeout=2)[0] == 200

        wait("raw vLLM /health", healthy, timeout=RAW_TIMEOUT, every=0.1)
        health = time.monotonic() - started
        name = next(a.split("=", 1)[1] for a in args if a.startswith("--served-model-name="))
        status, answer = http(f"{base}/v1/completions", {"model": name, "prompt": "hello", "max_tokens": 1}, timeout=60)
        first = time.monotonic() - started
        if status != 200:
            raise RuntimeError(f"raw vLLM completion answered {status}")
        return {"health_seconds": round(health, 3), "first_completion_seconds": round(first, 3)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the cluster up")
    parser.add_argument("--probe-period", default="10", help="the operator's SCIBOX_PROBE_PERIOD (default: its default)")
    opts = parser.parse_args()
    name = os.environ.get("SCIBOX_CLUSTER_NAME") or "coldstart"
    work = Path(tempfile.mkdtemp(prefix="scibox-cold-start-"))
    model = make_tiny_model(work / "hub-tiny-llama")
    mirror = HubMirror()
    mirror.add_repo(TINY_REPO, model)
    mirror.add_repo(SHARDS_REPO, None, extra_files=shards_repo(work, (model / "config.json").read_bytes()))
    mirror.start()
    cluster = Cluster(name=name)
    operator = None
    result: dict = {"cluster": name, "model": TINY_REPO, "probe_period_seconds": float(opts.probe_period)}
    try:
        result["download"] = compare_downloads(mirror.endpoint, work / "downloads")
        cluster.start(nodes=[real_runner_node(NODE, gpus=2)])
        # pod IPs of its own: another cluster's runner on this machine hands out 127.200.0.x too
        cluster.start_runner(NODE, pod_cidr=f"127.200.{1 + zlib.crc32(name.encode()) % 250}.0/24")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io", "--timeout=60s")
        operator = OperatorProcess(Path(cluster.kubeconfig), work / "operator", hub_endpoint=mirror.endpoint,
                                   extra_env={"SCIBOX_PROBE_PERIOD": opts.probe_period})
        operator.start()
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        cluster.rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cold, warm, compile_cache, rendered = through_operator(cluster, ns, mirror.endpoint)
        result["operator_cold"], result["operator_warm_restart"] = cold, warm
        result["compile_cache_on_claim"] = compile_cache
        model_dir = rendered["model_dir"] / "scibox--tiny-llama" / "main"
        raw_root = work / "raw" / "vllm-cache"
        result["raw_vllm_cold"] = raw_vllm(rendered, model_dir, raw_root, work / "raw-cold.log")
        result["raw_vllm_warm"] = raw_vllm(rendered, model_dir, raw_root, work / "raw-warm.log")
        # the operator's own share, from its stages: what is not vLLM's start (engine load)
        st = cold["startup"]
        result["operator_share_seconds"] = round(st["readySeconds"] - st.get("engineLoadSeconds", 0), 3)
        raw_cold = result["raw_vllm_cold"]["first_completion_seconds"]
        result["overhead_seconds"] = round(cold["apply_to_ready_seconds"] - raw_cold, 3)
        result["warm_over_cold"] = round(warm["apply_to_ready_seconds"] / cold["apply_to_ready_seconds"], 3)
        result["raw_warm_over_cold"] = round(result["raw_vllm_warm"]["first_completion_seconds"] / raw_cold, 3)
        result["targets"] = {"overhead_at_most_seconds": 5, "overhead_met": result["overhead_seconds"] <= 5,
                             "warm_well_under_cold": result["warm_over_cold"] < 0.9}
        cluster.rest.delete(f"/api/v1/namespaces/{ns}")
    finally:
        if operator is not None:
            operator.stop()
        if not opts.keep and cluster.started:
            cluster.down()
        mirror.stop()
        shutil.rmtree(work / "downloads", ignore_errors=True)
        result["work_dir"] = str(work)
        print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
