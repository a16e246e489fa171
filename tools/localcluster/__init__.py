"""The local Kubernetes cluster shared by pytest, benchmarks and the demo.

    from tools.localcluster import Cluster
    cluster = Cluster.up()          # starts it, or returns a handle on the one already up
    cluster.kubeconfig, cluster.apiserver_url, cluster.kubectl("get", "nodes")
    cluster.down()

CLI: `python -m tools.localcluster up|down|status|install-prometheus-crds|uninstall-prometheus-crds`.
"""

# Imported lazily so that `python -m tools.localcluster.build` needs nothing beyond the stdlib.
_EXPORTS = {
    "Cluster": "local", "ClusterError": "local", "DEFAULT_NAME": "local",
    "parse_request_totals": "local",
    "NodeShape": "nodes", "default_nodes": "nodes", "load_shapes": "nodes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
