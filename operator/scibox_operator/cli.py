"""`scibox-operator`: run the operator, render manifests offline, plan parallelism."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .planning.cli import add_plan_parser, run_plan


def render_manifests(body: dict[str, Any], *, config: dict | None = None, gpu_labels: dict[str, str] | None = None,
                     gpus_per_node: int = 8, cache_complete: bool = True) -> list[dict[str, Any]]:
    """Everything the operator would create for `body`, without a cluster (GitOps previews): the
    controller's own `desired()`, first while the model downloads, then once it is cached."""
    from scibox_operator.api.spec import parse
    from scibox_operator.planning.serving_plan import GpuNode, PlanFailure, decide_serving_plan
    from scibox_operator.reconcile.status import CacheState

    from .reconcile.desired import Observed, desired

    vd = parse(body)
    nodes = [GpuNode("node", tuple(sorted((gpu_labels or {}).items())), gpus_per_node)] if gpu_labels else []
    plan = decide_serving_plan(vd, config=config, safetensors_index=None, nodes=nodes,
                               cache_shared=vd.spec.cache.access_mode == "ReadWriteMany")
    stages = [Observed(users=(vd,), service_monitor_crd=True, leader_worker_set_crd=True)]
    if cache_complete:
        stages.append(Observed(users=(vd,), cache=CacheState(True, reason="Downloaded"), service_monitor_crd=True,
                               leader_worker_set_crd=True))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for observed in stages:
        want = desired(vd, plan, observed)
        if want.failure is not None:  # what the controller would report instead of applying
            raise PlanFailure(want.failure.reason, want.failure.message)
        for child in want.children:
            out.setdefault((child["kind"], child["metadata"]["name"]), child)
    return list(out.values())


def _run(args: argparse.Namespace) -> int:
    import kopf

    from scibox_operator import handlers  # noqa: F401  (registers the handlers
    from scibox_operator.runtime.kube import WATCH_NAMESPACES_ENV

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # kopf logs every handled watch event at INFO: thousands of lines a minute at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The controller's own LISTs (priming, re-listing) must stay inside the same namespaces.
    os.environ[WATCH_NAMESPACES_ENV] = ",".join(args.namespace or ())
    kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness)
    return 0


def _render(args: argparse.Namespace) -> int:
    """Every VLLMDeployment of the file (a sample may carry its Secret alongside)."""
    from scibox_operator.api.names import KIND
    from scibox_operator.api.spec import InvalidSpec
    from scibox_operator.planning.serving_plan import PlanFailure

    try:
        docs = [d for d in yaml.safe_load_all(Path(args.file).read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    bodies = [d for d in docs if d.get("kind") == KIND]
    if not bodies:
        print(f"error: {args.file} holds no {KIND}", file=sys.stderr)
        return 2
    config = json.loads(Path(args.model_config).read_text()) if args.model_config else None
    labels = {"nvidia.com/gpu.product": args.gpu} if args.gpu else None
    manifests: list[dict[str, Any]] = []
    for body in bodies:
        body.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        body["metadata"].setdefault("uid", "00000000-0000-0000-0000-000000000000")
        try:
            manifests += render_manifests(body, config=config, gpu_labels=labels, gpus_per_node=args.gpus_per_node)
        except (InvalidSpec, PlanFailure) as exc:
            print(f"error: {body['metadata'].get('name')}: {exc}", file=sys.stderr)
            return 2
    sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scibox-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    run.add_argument("--namespace", action="append", help="watch only this namespace (repeatable)")
    run.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)
    render = sub.add_parser("render", help="print the manifests the operator would create for a VLLMDeployment")
    render.add_argument("-f", "--file", required=True)
    render.add_argument("-n", "--namespace", default="default")
    render.add_argument("--model-config", help="the model's config.json (needed when parallelism is auto)")
    render.add_argument("--gpu", help="GPU product assumed for auto parallelism, e.g. NVIDIA-H100-80GB-HBM3")
    render.add_argument("--gpus-per-node", type=int, default=8)
    render.set_defaults(func=_render)
    add_plan_parser(sub)
    sub.choices["plan"].set_defaults(func=run_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
