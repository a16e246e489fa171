"""The Prometheus-Operator CRDs, taken from the real Go module at the pinned version.

`go mod download -json github.com/prometheus-operator/prometheus-operator@<version>` puts the
module in the Go module cache; its `example/prometheus-operator-crd-full/` holds the generated
CRD YAMLs. Only the kinds the operator uses are installed.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from . import build, crds, versions
from .rest import Rest

MODULE = "github.com/prometheus-operator/prometheus-operator"
CRD_DIR = "example/prometheus-operator-crd-full"
GROUP = "monitoring.coreos.com"
PLURALS = ("servicemonitors", "podmonitors", "prometheusrules")
CRD_NAMES = tuple(f"{p}.{GROUP}" for p in PLURALS)


def module_dir(version: str = versions.PROMETHEUS_OPERATOR) -> Path:
    """The module's source in the Go module cache (downloaded from the proxy if absent)."""
    return build.module_dir(MODULE, version)


def crd_manifests(version: str = versions.PROMETHEUS_OPERATOR) -> list[dict]:
    root = module_dir(version) / CRD_DIR
    manifests = []
    for plural in PLURALS:
        path = root / f"{GROUP}_{plural}.yaml"
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
            raise RuntimeError(f"{path}: expected exactly one CustomResourceDefinition")
        manifests.append(docs[0])
    return manifests


def install(rest: Rest, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    names = crds.apply_established(rest, crd_manifests(), deadline)
    # Established CRDs can still miss from discovery for a moment; wait until they serve.
    for plural in PLURALS:
        while True:
            try:
                rest.get(f"/apis/{GROUP}/v1/{plural}?limit=1")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return names


def uninstall(rest: Rest, timeout: float = 60.0) -> None:
    crds.delete_and_wait(rest, CRD_NAMES, timeout)
