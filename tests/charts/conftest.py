"""Fixtures for the chart's tests against a real API server.

`chart_cluster` (session) is a local cluster of its own (name $SCIBOX_CHARTS_CLUSTER_NAME,
default "scibox-charts"), not the shared one: the operator started here watches every
namespace, and in the shared cluster it would reconcile other tests' objects while their own
(admin) operator reconciled the objects of this proof. Same lifecycle rules as `cluster`: reused
when up, stopped at the end only if this session started it and no other session uses it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def chart_cluster():
    from tools.localcluster import Cluster

    handle = Cluster(name=os.environ.get("SCIBOX_CHARTS_CLUSTER_NAME", "scibox-charts"))
    handle.start(register=True)
    handle.install_prometheus_crds()
    yield handle
    handle.leave()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_namespace(cluster, name: str, labels: dict[str, str] | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(doc))
    return name


def token_kubeconfig(cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest
    API: the identity the chart gives the operator's pods, and nothing more."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": service_account}}],
        "current-context": "sa",
    }))
    path.chmod(0o600)
    return path
