"""The demo: a tiny model becomes an OpenAI endpoint that answers, through the operator.

1. a local Kubernetes cluster `demo` (real control plane; kwok GPU nodes; one node,
   `real-node-0`, whose pods run for real: tools/localcluster/runner.py) and the CRD;
2. a local Hugging Face Hub mirror serving a tiny random Llama as `scibox/tiny-llama`;
3. the operator, as a process;
4. `kubectl apply` of a VLLMDeployment: the operator's download Job fetches the model into the
   cache volume, its Deployment's pod runs the real vLLM CPU server, its probe reports
   Ready=True/Serving; then a completion through the OpenAI API.

Everything listens on 127.0.0.0/8. By default the cluster, runner, operator and mirror stay up
afterwards (the endpoint keeps answering); `--down` stops all of it, `--once` runs the demo and
stops everything at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.localcluster import Cluster  # noqa: E402
from tools.localcluster.nodes import REAL_RUNNER_TOLERATION, default_nodes, real_runner_node  # noqa: E402

CLUSTER = "demo"
NODE = "real-node-0"
NAMESPACE = "demo"
NAME = "tiny-llama"
REPO = "scibox/tiny-llama"
API_KEY = "demo-key"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[demo {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the demo's own processes (operator, hub mirror): PID files next to the cluster's ---------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running(state: Path, name: str, marker: str) -> int | None:
    """The PID of the demo's `name` process if it still runs (its command line holds `marker`)."""
    try:
        pid = int((state / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if marker in _cmdline(pid) else None


def spawn(state: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = open(state / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=ROOT)
    (state / f"{name}.pid").write_text(str(proc.pid))
    return proc


def stop(state: Path, name: str, marker: str) -> None:
    pid = running(state, name, marker)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while running(state, name, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if running(state, name, marker):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    (state / f"{name}.pid").unlink(missing_ok=True)
    say(f"stopped {name} (pid {pid})")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(NO_PROXY="127.0.0.0/8,localhost", no_proxy="127.0.0.0/8,localhost", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


def start_hub_mirror(state: Path) -> str:
    """The local hub mirror with the tiny model; returns its HF_ENDPOINT."""
    endpoint_file = state / "hub-mirror.endpoint"
    if running(state, "hub-mirror", "tests.fixtures.hub_mirror") and endpoint_file.is_file():
        return endpoint_file.read_text().strip()
    from tests.fixtures.tiny_model import make_tiny_model

    model = make_tiny_model(state / "tiny-llama")
    port = free_port()
    proc = spawn(state, "hub-mirror", [sys.executable, "-m", "tests.fixtures.hub_mirror", "--port", str(port),
                                       f"{REPO}={model}"], child_env())
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with NO_PROXY.open(f"{endpoint}/api/models/{REPO}", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the hub mirror did not start; see {state / 'hub-mirror.log'}")
        time.sleep(0.2)
    endpoint_file.write_text(endpoint)
    return endpoint


def start_operator(state: Path, cluster: Cluster, hub: str) -> int:
    pid = running(state, "operator", "scibox_operator.cli")
    if pid:
        return pid
    health = free_port()
    env = child_env(KUBECONFIG=str(cluster.kubeconfig), SCIBOX_PROBE_ALLOWED_CIDRS="127.0.0.0/8",
                    SCIBOX_HUB_ENDPOINT=hub, SCIBOX_METRICS_ADDR="127.0.0.1", SCIBOX_METRICS_PORT=str(free_port()),
                    SCIBOX_PROBE_PERIOD="2")
    proc = spawn(state, "operator", [sys.executable, "-m", "scibox_operator.cli", "run",
                                     "--liveness", f"http://127.0.0.1:{health}/healthz"], env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with NO_PROXY.open(f"http://127.0.0.1:{health}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return proc.pid
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the operator did not start; see {state / 'operator.log'}")
        time.sleep(0.2)


def manifest(hub: str) -> list[dict]:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{NAME}-api-key"},
              "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()}}
    vllmd = {
        "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": NAME},
        "spec": {
            # What vLLM's CPU build serves on this machine: bf16, a short context.
            "model": {"name": REPO, "servedModelName": NAME, "dtype": "bfloat16", "maxModelLen": 256},
            "resources": {"gpus": 1},
            # Onto the node whose pods run for real.
            "nodeSelector": {"scibox.io/real-runner": "true"},
            "tolerations": [REAL_RUNNER_TOLERATION],
            "cache": {"endpoint": hub, "size": "1Gi"},
            "auth": {"apiKeySecretRef": {"name": f"{NAME}-api-key"}},
            "engine": {"maxNumSeqs": 4},
            "rollout": {"startupTimeoutSeconds": 900},
        },
    }
    return [secret, vllmd]


def vllmd_status(cluster: Cluster) -> dict:
    body = cluster.rest.get_or_none(f"/apis/scibox.io/v1alpha1/namespaces/{NAMESPACE}/vllmdeployments/{NAME}")
    return (body or {}).get("status") or {}


def ready_condition(status: dict) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def wait_until_serving(cluster: Cluster, timeout: float) -> float:
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout:
        status = vllmd_status(cluster)
        ready = ready_condition(status)
        now = (status.get("phase"), ready.get("reason"))
        if now != last and now[0]:
            say(f"phase {now[0]}, Ready={ready.get('status')} ({now[1]}): {ready.get('message', '')[:100]}")
            last = now
        if ready.get("status") == "True":
            return time.monotonic() - started
        if status.get("phase") == "Failed":
            raise SystemExit(f"the VLLMDeployment failed: {json.dumps(status, indent=1)}")
        time.sleep(1)
    raise SystemExit(f"not Ready after {timeout:.0f}s; see {cluster.state_dir}/runner/{NODE}/logs/")


def server_pod_ip(cluster: Cluster) -> str:
    pods = cluster.rest.get(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector="
                            f"app.kubernetes.io/instance%3D{NAME},app.kubernetes.io/component%3Dserver")["items"]
    running_pods = [p for p in pods if p["status"].get("phase") == "Running"]
    if not running_pods:
        raise SystemExit("no running server pod")
    return running_pods[0]["status"]["podIP"]


def complete(url: str, prompt: str) -> dict:
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(
        {"model": NAME, "prompt": prompt, "max_tokens": 12, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with NO_PROXY.open(req, timeout=120) as resp:
        return json.loads(resp.read())


def down() -> None:
    cluster = Cluster(name=CLUSTER)
    state = cluster.state_dir / "demo"
    stop(state, "operator", "scibox_operator.cli")
    stop(state, "hub-mirror", "tests.fixtures.hub_mirror")
    cluster.down()  # the runner first (it stops its pods' processes), then the control plane
    say(f"cluster {CLUSTER} down; nothing of the demo runs any more")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", action="store_true", help="stop a running demo (operator, mirror, runner, cluster)")
    parser.add_argument("--once", action="store_true", help="run the demo, then stop everything")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for Ready")
    args = parser.parse_args()
    if args.down:
        down()
        return 0

    cluster = Cluster(name=CLUSTER)
    cluster.start(nodes=default_nodes() + [real_runner_node(NODE, gpus=2)])
    say(f"cluster {CLUSTER} up ({cluster.apiserver_url}); KUBECONFIG={cluster.kubeconfig}")
    state = cluster.state_dir / "demo"
    state.mkdir(exist_ok=True)
    try:
        cluster.start_runner(NODE)
        say(f"node {NODE} Ready: its pods run as real processes (runner log {cluster.log_file('runner-' + NODE)})")
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/vllmdeployments.scibox.io", "--timeout=60s")
        hub = start_hub_mirror(state)
        say(f"hub mirror {hub} serves {REPO}")
        pid = start_operator(state, cluster, hub)
        say(f"operator running (pid {pid}, log {state / 'operator.log'})")

        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        path = state / f"{NAME}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest(hub)}, indent=1))
        applied = time.monotonic()
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(path))
        say(f"kubectl apply -f {path}")
        took = wait_until_serving(cluster, args.timeout)
        total = time.monotonic() - applied
        say(f"apply -> Ready=True/Serving in {total:.1f}s")

        # The pod's own probes (every 10 s, as rendered) follow the operator's (every 2 s here).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (cluster.rest.get(
                f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}").get("status") or {}).get("readyReplicas") != 1:
            time.sleep(1)
        url = f"http://{server_pod_ip(cluster)}:8000"
        answer = complete(url, "hello world")
        say(f"POST {url}/v1/completions {{prompt: 'hello world'}} -> {answer['choices'][0]['text']!r} "
            f"({answer['usage']['completion_tokens']} tokens; random weights, so gibberish is right)")
        print(cluster.kubectl("get", "vllmd,deploy,job,pod,pvc", "-n", NAMESPACE, "-o", "wide").stdout)
        print(json.dumps(vllmd_status(cluster), indent=1))
        if args.once:
            print("\n(--once: stopping everything now)")
        else:
            print(f"\nThe endpoint keeps answering:\n  curl -s {url}/v1/completions "
                  f"-H 'Authorization: Bearer {API_KEY}' -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{NAME}\", \"prompt\": \"hello\", \"max_tokens\": 8}}'\n"
                  f"  KUBECONFIG={cluster.kubeconfig} kubectl get vllmd -A\n"
                  f"Stop everything with: scripts/demo.sh --down")
        print(json.dumps({"apply_to_ready_s": round(total, 1), "waited_s": round(took, 1),
                          "demo_total_s": round(time.monotonic() - T0, 1)}))
    finally:
        if args.once:
            down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
