"""python -m tools.localcluster up|down|status|install-prometheus-crds|uninstall-prometheus-crds"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .local import DEFAULT_NAME, Cluster, ClusterError
from .nodes import NodeShapeError, load_shapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.localcluster", description=__doc__)
    parser.add_argument("--name", default=DEFAULT_NAME, help="cluster name (state dir "
                        "~/.cache/scibox-cluster/run/<name>, or $SCIBOX_CLUSTER_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster (no-op if already up); prints the kubeconfig")
    up.add_argument("--nodes", type=Path, help="JSON list of node shapes (see tools/localcluster/nodes.py)")
    up.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("down", help="stop every process `up` started and remove the state dir")
    sub.add_parser("status", help="print the cluster's state as JSON")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    sub.add_parser("install-prometheus-crds", help="install ServiceMonitor/PodMonitor/PrometheusRule CRDs")
    sub.add_parser("uninstall-prometheus-crds")
    args = parser.parse_args(argv)

    cluster = Cluster(name=args.name)
    try:
        if args.command == "up":
            shapes = load_shapes(args.nodes) if args.nodes else None
            started = time.monotonic()
            cluster.start(nodes=shapes, timeout=args.timeout)
            verb = "started" if cluster.started else "already up"
            print(f"cluster {args.name} {verb} in {time.monotonic() - started:.1f}s "
                  f"({cluster.apiserver_url})", file=sys.stderr)
            print(cluster.kubeconfig)
        elif args.command == "down":
            cluster.down()
            print(f"cluster {args.name} down", file=sys.stderr)
        elif args.command == "status":
            status = cluster.status()
            print(json.dumps(status, indent=1))
            return 0 if status["up"] else 3
        elif args.command == "kubeconfig":
            if not cluster.is_up():
                raise ClusterError(f"cluster {args.name} is not up")
            print(cluster.kubeconfig)
        elif args.command == "install-prometheus-crds":
            for name in cluster.install_prometheus_crds():
                print(name)
        elif args.command == "uninstall-prometheus-crds":
            cluster.uninstall_prometheus_crds()
    except (ClusterError, NodeShapeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
