"""Prefix-cache hits through a VLLMGateway, cache_aware against round_robin, in one run; prints JSON.

    python -m tests.bench.gateway_prefix                       # cluster "gateway-bench", stopped after
    python -m tests.bench.gateway_prefix --cluster NAME --keep

Real parts only: the local cluster with a real-runner node, the operator as a process, one
VLLMDeployment of the tiny model with 2 replicas (two real vLLM CPU servers, prefix caching on,
one ReadWriteMany cache), one VLLMGateway (the real vllm-router, discovering the pods through
the API server). For each policy (cache_aware, then round_robin after a spec edit that rolls the
router): `groups` long prefixes, fresh for the policy (so the other policy's cached blocks do not
count), each followed by `per_group` different short suffixes, sent in an interleaved order
through the gateway, one at a time. Printed per policy, side by side: the two servers'
vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total over that phase (tokens), and the
requests each server got. Nothing is asserted: this measures.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import REAL_NODE, REAL_NODE_GPUS, vllmd_body  # noqa: E402
from tests.fixtures.cluster import apply_rwx_storage_class  # noqa: E402
from tests.fixtures.hub_mirror import HubMirror  # noqa: E402
from tests.fixtures.operator import CRD, GATEWAY_CRD, OperatorProcess  # noqa: E402
from tests.fixtures.tiny_model import VOCAB, make_tiny_model  # noqa: E402
from tests.loopback import NO_PROXY  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from tools.localcluster import Cluster  # noqa: E402
from tools.localcluster.nodes import REAL_RUNNER_TOLERATION, real_runner_node  # noqa: E402

API = "/apis/scibox.io/v1alpha1"
NS = "gateway-bench"
WORDS = [w for w in VOCAB if w.startswith("w")]


def http(url: str, payload: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait(what: str, probe, timeout: float, every: float = 1.0):
    return wait_for(what, probe, timeout, every=every)


def counters(pod_ip: str) -> dict[str, float]:
    _, text = http(f"http://{pod_ip}:8000/metrics", timeout=10)

    def total(name: str) -> float:
        return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    return {"hits": total("vllm:prefix_cache_hits_total"), "queries": total("vllm:prefix_cache_queries_total"),
            "requests": total("vllm:request_success_total")}


def server_pods(cluster: Cluster) -> dict[str, str]:
    pods = cluster.rest.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=app.kubernetes.io/component=server")["items"]
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods
            if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")}


def router_ip(cluster: Cluster) -> str | None:
    pods = cluster.rest.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=app.kubernetes.io/component=router")["items"]
    ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions") or [])]
    return ready[0]["status"]["podIP"] if len(ready) == 1 and len(pods) == 1 else None


def workload(rng: random.Random, groups: int, per_group: int, prefix_words: int, suffix_words: int) -> list[str]:
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(prefix_words)) for _ in range(groups)]
    prompts = [f"{p} {' '.join(rng.choice(WORDS) for _ in range(suffix_words))}" for p in prefixes
               for _ in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def phase(cluster: Cluster, policy: str, prompts: list[str]) -> dict:
    gw_path = f"{API}/namespaces/{NS}/vllmgateways/gw"
    cluster.rest.request("PATCH", gw_path, {"spec": {"policy": policy}}, content_type="application/merge-patch+json")

    def routed():  # the router of this policy runs and has discovered both replicas
        ip = router_ip(cluster)
        if ip is None:
            return None
        dep = cluster.rest.get(f"/apis/apps/v1/namespaces/{NS}/deployments/gw-router")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        _, text = http(f"http://{ip}:8000/workers", timeout=5)
        ok = args[args.index("--policy") + 1] == policy and text.count('"is_healthy":true') == 2
        return ip if ok else None

    ip = wait(f"router with {policy} and 2 workers", routed, timeout=300)
    pods = server_pods(cluster)
    before = {name: counters(pod_ip) for name, pod_ip in pods.items()}
    errors = 0
    started = time.monotonic()
    for prompt in prompts:
        code, _ = http(f"http://{ip}:8000/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 1})
        errors += code != 200
    seconds = time.monotonic() - started
    after = {name: counters(pod_ip) for name, pod_ip in pods.items()}
    per_pod = {name: {k: after[name][k] - before[name][k] for k in ("hits", "queries", "requests")} for name in pods}
    hits = sum(p["hits"] for p in per_pod.values())
    queries = sum(p["queries"] for p in per_pod.values())
    return {"prefix_cache_hits": hits, "prefix_cache_queries": queries,
            "hit_ratio": round(hits / queries, 4) if queries else None,
            "requests_per_server": sorted(p["requests"] for p in per_pod.values()),
            "errors": errors, "seconds": round(seconds, 1)}


def run(args: argparse.Namespace) -> dict:
    cluster = Cluster(name=args.cluster)
    cluster.start(nodes=[real_runner_node(REAL_NODE, gpus=REAL_NODE_GPUS)])
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    mirror = HubMirror()
    mirror.add_repo("scibox/tiny-llama", make_tiny_model(tmp / "model"))
    mirror.start()
    operator = OperatorProcess(cluster.kubeconfig, tmp / "operator", hub_endpoint=mirror.endpoint)
    try:
        cluster.start_runner(REAL_NODE, gpus=REAL_NODE_GPUS)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD), "-f", str(GATEWAY_CRD))
        cluster.kubectl("wait", "--for=condition=Established", "crd/vllmgateways.scibox.io", "--timeout=60s")
        rwx = apply_rwx_storage_class(cluster)
        operator.start()
        cluster.rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        body = vllmd_body("tiny", "scibox/tiny-llama", mirror.endpoint)
        body["spec"].update({"replicas": 2})
        body["spec"]["resources"].update({"cpu": "500m", "memory": "2Gi"})
        body["spec"]["cache"]["storageClassName"] = rwx
        body["spec"]["engine"]["enablePrefixCaching"] = True
        cluster.rest.create(f"{API}/namespaces/{NS}/vllmdeployments", body)
        cluster.rest.create(f"{API}/namespaces/{NS}/vllmgateways", {
            "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMGateway", "metadata": {"name": "gw"},
            "spec": {"policy": "cache_aware", "nodeSelector": {"scibox.io/real-runner": "true"},
                     "tolerations": [dict(REAL_RUNNER_TOLERATION)], "resources": {"cpu": "100m", "memory": "256Mi"}}})
        started = time.monotonic()

        def two_ready():
            gw = cluster.rest.get(f"{API}/namespaces/{NS}/vllmgateways/gw").get("status") or {}
            return [m["readyWorkers"] for m in gw.get("models") or []] == [2]
        wait("2 ready servers", two_ready, timeout=900, every=2)
        ready_s = time.monotonic() - started
        rng = random.Random(args.seed)
        results = {}
        for policy in ("cache_aware", "round_robin"):
            prompts = workload(rng, args.groups, args.per_group, args.prefix_words, args.suffix_words)
            results[policy] = phase(cluster, policy, prompts)
        return {"bench": "gateway_prefix", "model": "scibox/tiny-llama (random weights, WordLevel tokenizer)",
                "replicas": 2, "groups": args.groups, "per_group": args.per_group,
                "prefix_words": args.prefix_words, "suffix_words": args.suffix_words,
                "apply_to_two_ready_servers_s": round(ready_s, 1), "policies": results,
                "note": "hits/queries are vLLM's prefix-cache counters in tokens, summed over both "
                        "servers, for the requests of that phase only"}
    finally:
        operator.stop()
        mirror.stop()
        if not args.keep:
            cluster.rest.delete(f"/api/v1/namespaces/{NS}")
            if cluster.started:
                cluster.down()
            else:
                cluster.stop_runner(REAL_NODE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", default="gateway-bench")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--per-group", type=int, default=6)
    parser.add_argument("--prefix-words", type=int, default=160)
    parser.add_argument("--suffix-words", type=int, default=8)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and the namespace up")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
