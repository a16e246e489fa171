"""The Prometheus-Operator CRDs, taken from the real Go module at the pinned version.

`go mod download -json github.com/prometheus-operator/prometheus-operator@<version>` puts the
module in the Go module cache; its `example/prometheus-operator-crd-full/` holds the generated
CRD YAMLs. Only the kinds the operator uses are installed.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from . import build, versions
from .rest import Rest

MODULE = "github.com/prometheus-operator/prometheus-operator"
CRD_DIR = "example/prometheus-operator-crd-full"
GROUP = "monitoring.coreos.com"
PLURALS = ("servicemonitors", "podmonitors", "prometheusrules")
CRD_NAMES = tuple(f"{p}.{GROUP}" for p in PLURALS)
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


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
    names = []
    for crd in crd_manifests():
        name = crd["metadata"]["name"]
        rest.apply(CRD_PATH, name, crd)
        names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = rest.get(f"{CRD_PATH}/{name}")
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s: {conditions}")
            time.sleep(0.2)
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
    for name in CRD_NAMES:
        rest.delete(f"{CRD_PATH}/{name}")
    deadline = time.monotonic() + timeout
    for name in CRD_NAMES:
        while rest.get_or_none(f"{CRD_PATH}/{name}") is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} still present after {timeout}s")
            time.sleep(0.2)
